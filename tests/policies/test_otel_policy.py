"""The `otel:` section: OpenTelemetry instruments mapped onto the catalogue's signals."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from policies import PILOT_POLICY_PATH, PolicyError, load_policy
from policies._loader import DEFAULT_POLICY_PATH


def _write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _default() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(DEFAULT_POLICY_PATH.read_text(encoding="utf-8"))
    return data


def test_genai_conventions_map_out_of_the_box() -> None:
    otel = load_policy().otel
    assert otel is not None
    duration = otel.instrument("gen_ai.client.operation.duration")
    assert duration is not None
    assert duration.signal == "gen_ai.client.operation.duration"
    assert duration.attributes["gen_ai.request.model"] == "model"
    assert duration.attributes["route"] == "route"
    assert duration.factor_for("ms", "s") == 0.001
    assert duration.factor_for("s", "s") == 1.0
    assert duration.factor_for("min", "s") is None
    tokens = otel.instrument("GEN_AI.CLIENT.TOKEN.USAGE")  # names are case-insensitive
    assert tokens is not None
    assert "gen_ai.token.type" in tokens.ignore
    assert otel.instrument("http.server.duration") is None


def test_pilot_maps_the_same_instruments() -> None:
    assert load_policy(PILOT_POLICY_PATH).otel == load_policy().otel


def test_the_mapping_is_part_of_the_content_hash(tmp_path: Path) -> None:
    data = _default()
    data["otel"]["instruments"]["gen_ai.client.operation.duration"]["units"] = {"s": 1.0}
    assert load_policy(_write(tmp_path, data)).content_hash != load_policy().content_hash


def test_a_policy_without_the_section_keeps_its_hash(tmp_path: Path) -> None:
    data = _default()
    del data["otel"]
    without = load_policy(_write(tmp_path, data))
    assert without.otel is None
    # The hash as it was computed before the section existed.
    before = without.model_dump(mode="json", exclude={"cost", "canary", "otel"})
    canonical = json.dumps(before, sort_keys=True, separators=(",", ":"))
    assert without.content_hash == hashlib.sha256(canonical.encode()).hexdigest()


@pytest.mark.parametrize(
    ("instrument", "reason"),
    [
        ({"signal": "no.such.signal"}, "is not in the catalogue"),
        ({"signal": "inference.errors", "attributes": {"x": "kind"}}, "has no 'kind'"),
        (
            {"signal": "inference.errors", "attributes": {"a": "route", "b": "route"}},
            "carried by two attributes",
        ),
        (
            {"signal": "inference.errors", "attributes": {"a": "route"}, "ignore": ["a"]},
            "both mapped and ignored",
        ),
        ({"signal": "inference.errors", "units": {"ms": 0.001}}, "whole number"),
        ({"signal": "inference.errors", "units": {"ms": 0.0}}, "finite number > 0"),
    ],
)
def test_a_mapping_that_does_not_fit_the_catalogue_is_refused(
    tmp_path: Path, instrument: dict[str, Any], reason: str
) -> None:
    data = _default()
    data["otel"]["instruments"]["my.instrument"] = instrument
    with pytest.raises(PolicyError, match=reason) as info:
        load_policy(_write(tmp_path, data))
    assert "otel" in str(info.value)
