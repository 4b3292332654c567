"""Reading policy files (YAML) into a typed `Policy`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from policies._errors import PolicyError, yaml_problem
from policies._model import SECTIONS_REQUIRED_IN_FILES, Policy, PolicyKeyError

__all__ = ["DEFAULT_POLICY_PATH", "PILOT_POLICY_PATH", "dump_policy", "load_policy"]

DEFAULT_POLICY_PATH = Path(__file__).parent / "default.yaml"
# The default signals under the local model with a four-fold budget: small fleets
# without a helper (a second operator).
PILOT_POLICY_PATH = Path(__file__).parent / "pilot.yaml"


def dump_policy(policy: Policy, path: Path | str) -> Path:
    """Write `policy` as a policy file that `load_policy` reads back to the same hash.

    For policies built in code (a demo's generated helper key, a test's small
    catalogue) that a separate process (the ingest, the helper) must load.
    """
    path = Path(path)
    text = yaml.safe_dump(policy.model_dump(mode="json"), sort_keys=False)
    path.write_text(text, encoding="utf-8")
    return path


def load_policy(path: Path | str = DEFAULT_POLICY_PATH) -> Policy:
    """Load and validate a policy file; raises `PolicyError` naming the file, key and reason."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(path, "", f"cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise PolicyError(path, "", f"not UTF-8 text: {exc.reason}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(path, "", yaml_problem(exc)) from exc
    if not isinstance(data, dict):
        raise PolicyError(path, "", "top level must be a mapping")
    for section in SECTIONS_REQUIRED_IN_FILES:
        if section not in data:
            raise PolicyError(path, section, "Field required (a policy file states it)")
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        key, reason = _describe(exc, data)
        raise PolicyError(path, key, reason) from exc


def _describe(exc: ValidationError, data: dict[str, Any]) -> tuple[str, str]:
    """The first error as (dotted key in the file, reason)."""
    first = exc.errors()[0]
    reason = str(first["msg"])
    error = first.get("ctx", {}).get("error")
    if isinstance(error, PolicyKeyError):
        # A model-level check: the location is the model, which exists in the file.
        parts = _file_path(first["loc"], data, keep_missing_last=False)
        parts.extend(error.key.split("."))
        reason = error.reason
    elif first["type"] == "finite_number":
        # YAML's .nan and .inf are floats; no policy number means anything unbounded.
        parts = _file_path(first["loc"], data, keep_missing_last=True)
        reason = f"must be a finite number, got {first['input']!r}"
    else:
        parts = _file_path(first["loc"], data, keep_missing_last=True)
        reason = reason.removeprefix("Value error, ")
    return ".".join(parts), reason


def _file_path(loc: Sequence[int | str], data: Any, *, keep_missing_last: bool) -> list[str]:
    """Map pydantic's error location to the keys a person sees in the file.

    pydantic inserts the discriminator tag of a union (`counter`, `histogram`) into the
    location; it is not a key of the file, so follow the data and drop elements that do
    not exist in it (except, if `keep_missing_last`, the last: a missing key being reported).
    """
    parts: list[str] = []
    node = data
    for i, element in enumerate(loc):
        last = i == len(loc) - 1
        present = (isinstance(node, dict) and element in node) or (
            isinstance(node, list) and isinstance(element, int) and element < len(node)
        )
        if present:
            node = node[element]
        elif not (last and keep_missing_last):
            continue
        parts.append(str(element))
    return parts
