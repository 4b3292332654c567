"""Reading policy files (YAML) into a typed `Policy`."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from policies._errors import PolicyError
from policies._model import Policy

__all__ = ["DEFAULT_POLICY_PATH", "load_policy"]

DEFAULT_POLICY_PATH = Path(__file__).parent / "default.yaml"


def load_policy(path: Path | str = DEFAULT_POLICY_PATH) -> Policy:
    """Load and validate a policy file; raises `PolicyError` naming the file, key and reason."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(path, "", f"cannot read: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(path, "", f"not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise PolicyError(path, "", "top level must be a mapping")
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise PolicyError(path, key, first["msg"]) from exc
