"""Error fingerprints: stable across paths, users and runs; blind to messages; keyed."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from client._fingerprint import ErrorFingerprinter, fingerprint_label

KEY = b"fleet-key-for-tests-0123456789ab"

# A small "app package" loaded from different install locations.
WORKER = """
class QuotaError(RuntimeError):
    pass


def parse(text):
    return int(text)


def handle(text):
    return parse(text) * 2


def over_quota(user):
    raise QuotaError(f"user {user} is over quota")


def recurse(n):
    if n == 0:
        raise RecursionError("deep")
    return recurse(n - 1)


def wrapped(text):
    try:
        return parse(text)
    except ValueError as exc:
        raise KeyError(text) from exc
"""


def _install(root: Path, padding: int = 0) -> ModuleType:
    """Write the package under `root` and import it as `fpapp.worker` from there."""
    package = root / "fpapp"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    # Padding shifts every line number, as an unrelated edit in a later release would.
    (package / "worker.py").write_text("\n" * padding + WORKER)
    spec = importlib.util.spec_from_file_location("fpapp.worker", package / "worker.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _raised(call: Callable[[], object]) -> BaseException:
    try:
        call()
    except BaseException as exc:
        return exc
    raise AssertionError("expected an exception")


@pytest.fixture
def alice(tmp_path: Path) -> ModuleType:
    return _install(tmp_path / "home" / "alice" / "venv" / "site-packages")


@pytest.fixture
def bob(tmp_path: Path) -> ModuleType:
    return _install(tmp_path / "Users" / "bob" / "Library" / "app", padding=7)


def test_same_error_on_two_machines_has_one_fingerprint(alice: ModuleType, bob: ModuleType) -> None:
    fp = ErrorFingerprinter(KEY)
    a = _raised(lambda: alice.handle("not a number"))
    b = _raised(lambda: bob.handle("also bad"))
    assert a.__traceback__ is not None
    assert b.__traceback__ is not None
    assert a.__traceback__.tb_next is not None  # really raised from two different files
    assert fp.fingerprint(a) == fp.fingerprint(b)


def test_the_message_never_influences_the_fingerprint(alice: ModuleType) -> None:
    fp = ErrorFingerprinter(KEY)
    ann = fp.fingerprint(_raised(lambda: alice.over_quota("ann")))
    ben = fp.fingerprint(_raised(lambda: alice.over_quota("ben")))
    assert ann == ben
    one = _raised(lambda: alice.over_quota("carla@example.com"))
    assert "carla" not in fp.describe(one)
    assert "quota" not in fp.describe(one).replace("over_quota", "")


def test_different_errors_differ(alice: ModuleType) -> None:
    fp = ErrorFingerprinter(KEY)
    prints = [
        fp.fingerprint(_raised(lambda: alice.handle("x"))),  # ValueError via handle
        fp.fingerprint(_raised(lambda: alice.parse("x"))),  # same type, other call path
        fp.fingerprint(_raised(lambda: alice.handle(None))),  # TypeError, same path
        fp.fingerprint(_raised(lambda: alice.over_quota("u"))),
        fp.fingerprint(_raised(lambda: alice.wrapped("x"))),  # KeyError caused by ValueError
        fp.fingerprint(KeyError("x")),  # same type, never raised: no frames, no cause
    ]
    assert len(set(prints)) == len(prints)


def test_output_is_a_keyed_hash_without_path_fragments(alice: ModuleType, tmp_path: Path) -> None:
    exc = _raised(lambda: alice.wrapped("secret-input"))
    fp = ErrorFingerprinter(KEY)
    value = fp.fingerprint(exc)
    assert re.fullmatch(r"[0-9a-f]{64}", value)
    assert ErrorFingerprinter(b"another-fleet-key-0123456789abcd").fingerprint(exc) != value
    described = fp.describe(exc)
    for fragment in ("/", "\\", "home", "alice", str(tmp_path), "secret-input", ".py"):
        assert fragment not in described
    # What is kept: types and module-relative function names.
    assert "builtins.KeyError" in described
    assert "builtins.ValueError" in described
    assert "fpapp.worker:parse" in described


def test_recursion_depth_does_not_split_a_bug(alice: ModuleType) -> None:
    fp = ErrorFingerprinter(KEY)
    shallow = fp.fingerprint(_raised(lambda: alice.recurse(3)))
    deep = fp.fingerprint(_raised(lambda: alice.recurse(200)))
    assert shallow == deep


def test_exception_groups_include_their_members(alice: ModuleType) -> None:
    fp = ErrorFingerprinter(KEY)
    value_error = _raised(lambda: alice.parse("x"))
    quota = _raised(lambda: alice.over_quota("u"))
    assert isinstance(value_error, Exception)
    assert isinstance(quota, Exception)
    both = ExceptionGroup("two", [value_error, quota])
    only_one = ExceptionGroup("one", [value_error])
    assert fp.fingerprint(both) != fp.fingerprint(only_one)


def test_a_cyclic_chain_terminates() -> None:
    first, second = ValueError("a"), KeyError("b")
    first.__context__ = second
    second.__context__ = first
    assert re.fullmatch(r"[0-9a-f]{64}", ErrorFingerprinter(KEY).fingerprint(first))


def _fingerprint_in_fresh_interpreter(root: Path, hash_seed: str) -> str:
    script = f"""
import importlib.util, json, os, sys
sys.path.insert(0, {str(Path.cwd())!r})
from client._fingerprint import ErrorFingerprinter, fingerprint_label
root = {str(root)!r}
os.makedirs(root + "/fpapp")
open(root + "/fpapp/__init__.py", "w").close()
open(root + "/fpapp/worker.py", "w").write({WORKER!r})
spec = importlib.util.spec_from_file_location("fpapp.worker", root + "/fpapp/worker.py")
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
try:
    mod.handle("y")
except ValueError as exc:
    print(json.dumps(ErrorFingerprinter({KEY!r}).fingerprint(exc)))
"""
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": hash_seed, "PATH": ""},
    ).stdout
    value = json.loads(out)
    assert isinstance(value, str)
    return value


def test_stable_across_runs(tmp_path: Path) -> None:
    first = _fingerprint_in_fresh_interpreter(tmp_path / "home" / "ann", "1")
    second = _fingerprint_in_fresh_interpreter(tmp_path / "Users" / "ben", "2")
    assert first == second


def test_a_short_key_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        ErrorFingerprinter(b"short")


# -- through the client: fingerprints counted in a closed domain -----------------------


def _raise_value_error() -> None:
    raise ValueError("secret message about /home/alice/notes.txt")


def _fingerprinted_telemetry(tmp_path, ingest, clock, values, key=b"k" * 32, labels=None):
    from client import MemoryTransport, Telemetry, TelemetryConfig
    from policies import CounterSignal, FingerprintPolicy
    from schemas import AppInfo, Tier
    from tests.client.conftest import POLICY

    policy = POLICY.model_copy(
        update={
            "signals": {
                "app.exceptions": CounterSignal(
                    privacy_model="local",
                    tier=Tier.HEALTH,
                    attributes={"fingerprint": values, **(labels or {})},
                    max_per_window=4,
                    epsilon=0.5,
                )
            },
            "fingerprints": FingerprintPolicy(signal="app.exceptions"),
        }
    )
    qw = Telemetry(
        TelemetryConfig(
            app=AppInfo(name="demo-app", version="1.0"),
            region="eu-west",
            policy=policy,
            ingest_public_key=ingest.public_key,
            transport=MemoryTransport(ingest.handle),
            state_dir=tmp_path / "state",
            clock=clock,
            mode="manual",
            fingerprint_key=key,
        )
    )
    qw.grant_consent("health")
    return qw


def _caught() -> ValueError:
    try:
        _raise_value_error()
    except ValueError as exc:
        return exc
    raise AssertionError("unreachable")


def _counted(window) -> dict[str, int]:
    return {t.attributes["fingerprint"]: t.value for t in window.truth if t.value}


def test_exceptions_count_under_their_hash_bucket(tmp_path, ingest, clock) -> None:
    buckets = [f"b{i:02d}" for i in range(8)]
    qw = _fingerprinted_telemetry(tmp_path, ingest, clock, buckets)
    exc = _caught()
    qw.record_exception(exc)
    qw.record_exception(_caught())  # same failure, same bucket
    (window,) = qw.collect_with_truth(clock.advance(hours=1))
    fp = ErrorFingerprinter(b"k" * 32).fingerprint(exc)
    assert _counted(window) == {f"b{int(fp, 16) % 8:02d}": 2}
    # Nothing of the message, path or fingerprint leaves: only the bucket label.
    payload = window.envelope.model_dump_json()
    assert "alice" not in payload
    assert "secret" not in payload
    assert fp[:16] not in payload
    qw.shutdown(carry_open_window=False)


def test_a_known_fingerprint_counts_under_itself(tmp_path, ingest, clock) -> None:
    known = ErrorFingerprinter(b"k" * 32).fingerprint(_caught())[:16]
    qw = _fingerprinted_telemetry(tmp_path, ingest, clock, [known, "b00", "b01"])
    qw.record_exception(_caught())
    qw.record_exception(KeyError("x"))  # unknown: a bucket
    (window,) = qw.collect_with_truth(clock.advance(hours=1))
    counted = _counted(window)
    assert counted[known] == 1
    assert sum(counted.values()) == 2
    qw.shutdown(carry_open_window=False)


def test_without_buckets_unknown_fingerprints_count_as_other(tmp_path, ingest, clock) -> None:
    qw = _fingerprinted_telemetry(tmp_path, ingest, clock, ["0123456789abcdef"])
    qw.record_exception(_caught())
    (window,) = qw.collect_with_truth(clock.advance(hours=1))
    assert _counted(window) == {"other": 1}
    qw.shutdown(carry_open_window=False)


def test_without_a_fleet_key_exceptions_are_dropped_and_counted(
    make_telemetry, tmp_path, ingest, clock
) -> None:
    qw = make_telemetry()
    qw.record_exception(_caught())  # the test policy declares no fingerprint signal
    assert qw.dropped() == {"unknown_signal": 1}
    qw2 = _fingerprinted_telemetry(tmp_path / "other", ingest, clock, ["b00"], key=None)
    qw2.record_exception(_caught())
    assert qw2.dropped() == {"no_fingerprint_key": 1}
    qw2.shutdown(carry_open_window=False)


def test_fingerprint_label_maps_into_the_declared_domain() -> None:
    fp = "f" * 64
    assert fingerprint_label(fp, ["ffffffffffffffff", "b00"]) == "ffffffffffffffff"
    assert fingerprint_label(fp, ["b00", "b01", "b02"]) == f"b{int(fp, 16) % 3:02d}"
    assert fingerprint_label(fp, ["0123456789abcdef"]) == "other"


def test_exceptions_carry_the_labels_the_app_passes(tmp_path, ingest, clock) -> None:
    models = ["m@1.0", "m@1.1"]
    qw = _fingerprinted_telemetry(tmp_path, ingest, clock, ["b00"], labels={"model": models})
    qw.record_exception(_caught(), model="m@1.1")
    qw.record_exception(_caught(), model="m@2.0")  # outside the domain: `other`
    qw.record_exception(_caught(), model="m@1.0", session="s1")  # undeclared: dropped
    qw.record_exception(_caught(), model="m@1.0", fingerprint="b07")  # computed, not given
    (window,) = qw.collect_with_truth(clock.advance(hours=1))
    counted = {
        (t.attributes["fingerprint"], t.attributes["model"]): t.value
        for t in window.truth
        if t.value
    }
    # Four exceptions: within the test signal's bound (4 a window), so none is clamped.
    assert counted == {("b00", "m@1.1"): 1, ("b00", "other"): 1, ("b00", "m@1.0"): 2}
    assert qw.dropped() == {"undeclared_label": 2}
    qw.shutdown(carry_open_window=False)


def test_a_label_named_exc_is_undeclared_not_an_error(tmp_path, ingest, clock) -> None:
    """`record_exception` runs in the app's exception handlers: it must never raise."""
    qw = _fingerprinted_telemetry(tmp_path, ingest, clock, ["b00"])
    qw.record_exception(_caught(), exc="x", self="y")
    (window,) = qw.collect_with_truth(clock.advance(hours=1))
    assert _counted(window) == {"b00": 1}
    assert qw.dropped() == {"undeclared_label": 2}
    qw.shutdown(carry_open_window=False)
