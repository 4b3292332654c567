"""The Prio3 binding from Python: full report flow, refusals, and the stub as its contract."""

import ast
import contextlib
import importlib
import inspect
import os
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import quietwire_prio
from quietwire_prio import DecodeError, MeasurementError, Prio3, Prio3Error, VerifyError

CTX = b"quietwire/test"
REPORTS = 50
P = Prio3.histogram(2, 1).field_modulus


@dataclass(frozen=True)
class Report:
    nonce: bytes
    public_share: bytes
    leader_share: bytes
    helper_share: bytes


def l1_measurement(rng: random.Random, length: int, bits: int) -> list[int]:
    """Random entries whose total is at most 2**bits - 1, mostly sparse like a counter cell."""
    remaining = rng.randint(0, 2**bits - 1)
    entries = [0] * length
    while remaining:
        step = rng.randint(1, remaining)
        entries[rng.randrange(length)] += step
        remaining -= step
    return entries


KINDS: dict[str, tuple[Callable[[], Prio3], Callable[[random.Random], list[int]]]] = {
    "l1_bound_sum": (
        lambda: Prio3.l1_bound_sum(16, 4, 6),
        lambda rng: l1_measurement(rng, 16, 4),
    ),
    "sum_vec": (
        lambda: Prio3.sum_vec(16, 4, 8),
        lambda rng: [rng.randint(0, 15) for _ in range(16)],
    ),
    "histogram": (
        lambda: Prio3.histogram(16, 4),
        lambda rng: [rng.randrange(16)],
    ),
}


def true_sum(vdaf: Prio3, measurements: Sequence[Sequence[int]]) -> list[int]:
    total = [0] * vdaf.output_length()
    for m in measurements:
        if vdaf.kind == "histogram":
            total[m[0]] += 1
        else:
            total = [t + v for t, v in zip(total, m, strict=True)]
    return total


def shard(vdaf: Prio3, measurement: Sequence[int]) -> Report:
    nonce = os.urandom(vdaf.nonce_size)
    return Report(nonce, *vdaf.shard(CTX, measurement, nonce))


def verify(vdaf: Prio3, key: bytes, report: Report) -> tuple[bytes, bytes]:
    """Both aggregators' verification, each from bytes only; the two output shares."""
    leader_state, leader_vs = vdaf.verify_init(
        key, CTX, 0, report.nonce, report.public_share, report.leader_share
    )
    helper_state, helper_vs = vdaf.verify_init(
        key, CTX, 1, report.nonce, report.public_share, report.helper_share
    )
    message = vdaf.verifier_shares_to_message(CTX, leader_vs, helper_vs)
    return (
        vdaf.verify_next(CTX, 0, leader_state, message),
        vdaf.verify_next(CTX, 1, helper_state, message),
    )


@pytest.fixture(params=sorted(KINDS))
def kind(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def vdaf(kind: str) -> Prio3:
    return KINDS[kind][0]()


@pytest.fixture
def key() -> bytes:
    return os.urandom(Prio3.VERIFY_KEY_SIZE)


def test_round_trip_gives_the_exact_sum(kind: str, vdaf: Prio3, key: bytes) -> None:
    rng = random.Random(f"round trip {kind}")
    measurements = [KINDS[kind][1](rng) for _ in range(REPORTS)]
    leader_out, helper_out = zip(
        *(verify(vdaf, key, shard(vdaf, m)) for m in measurements), strict=True
    )
    leader_agg = vdaf.aggregate(0, list(leader_out))
    helper_agg = vdaf.aggregate(1, list(helper_out))

    assert vdaf.unshard(leader_agg, helper_agg, REPORTS) == true_sum(vdaf, measurements)
    # Aggregating in two batches and merging gives the same shares.
    assert vdaf.merge(vdaf.aggregate(0, leader_out[:20]), vdaf.aggregate(0, leader_out[20:])) == (
        leader_agg
    )


def test_empty_aggregate_is_zero(vdaf: Prio3) -> None:
    zero = vdaf.aggregate(0, [])
    assert vdaf.unshard(zero, vdaf.aggregate(1, []), 0) == [0] * vdaf.output_length()


def test_noise_is_added_exactly_negatives_included(kind: str, vdaf: Prio3, key: bytes) -> None:
    rng = random.Random(f"noise {kind}")
    measurements = [KINDS[kind][1](rng) for _ in range(10)]
    outs = [verify(vdaf, key, shard(vdaf, m)) for m in measurements]
    leader_agg = vdaf.aggregate(0, [o[0] for o in outs])
    helper_agg = vdaf.aggregate(1, [o[1] for o in outs])
    width = vdaf.output_length()
    leader_noise = [rng.randint(-1000, 1000) for _ in range(width)]
    helper_noise = [rng.randint(-1000, 1000) for _ in range(width)]
    leader_noise[0] = helper_noise[0] = -5000  # at least one total well below zero

    got = vdaf.unshard(
        vdaf.add_noise(leader_agg, leader_noise), vdaf.add_noise(helper_agg, helper_noise), 10
    )

    totals = zip(true_sum(vdaf, measurements), leader_noise, helper_noise, strict=True)
    want = [s + a + b for s, a, b in totals]
    assert got == want
    assert got[0] < 0
    assert vdaf.add_noise(leader_agg, [0] * width) == leader_agg


def test_noise_up_to_half_the_field_maps_back() -> None:
    vdaf = Prio3.sum_vec(2, 1, 1)
    zero = vdaf.aggregate(0, [])
    half = (P - 1) // 2
    assert vdaf.unshard(vdaf.add_noise(zero, [half, -half]), zero, 0) == [half, -half]
    with pytest.raises(Prio3Error, match=r"noise\[1\] = .*below p/2"):
        vdaf.add_noise(zero, [0, half + 1])
    with pytest.raises(Prio3Error, match=r"noise\[0\] = .*below p/2"):
        vdaf.add_noise(zero, [-(2**200), 0])
    with pytest.raises(Prio3Error, match="noise has 3 values; the aggregate share has 2"):
        vdaf.add_noise(zero, [0, 0, 0])


@pytest.mark.parametrize("part", ["leader_share", "helper_share", "public_share"])
def test_tampered_report_is_refused(kind: str, vdaf: Prio3, key: bytes, part: str) -> None:
    report = shard(vdaf, KINDS[kind][1](random.Random(1)))
    tampered = bytearray(getattr(report, part))
    # Field elements are little-endian: flipping a low bit keeps an element below p, so the
    # share still decodes and only verification can tell.
    tampered[0] ^= 1
    forged = Report(**{**report.__dict__, part: bytes(tampered)})
    with pytest.raises(VerifyError, match="report refused"):
        verify(vdaf, key, forged)


def test_mismatched_keys_or_nonces_are_refused(vdaf: Prio3, key: bytes) -> None:
    report = shard(vdaf, KINDS[vdaf.kind][1](random.Random(2)))
    _, leader_vs = vdaf.verify_init(
        key, CTX, 0, report.nonce, report.public_share, report.leader_share
    )
    _, helper_vs = vdaf.verify_init(
        os.urandom(32), CTX, 1, report.nonce, report.public_share, report.helper_share
    )
    with pytest.raises(VerifyError):
        vdaf.verifier_shares_to_message(CTX, leader_vs, helper_vs)
    with pytest.raises(VerifyError):
        verify(vdaf, key, Report(**{**report.__dict__, "nonce": bytes(16)}))


def test_out_of_range_measurements_are_refused() -> None:
    l1 = Prio3.l1_bound_sum(4, 4, 4)
    sum_vec = Prio3.sum_vec(4, 4, 4)
    histogram = Prio3.histogram(4, 2)
    nonce = bytes(16)
    cases: list[tuple[Prio3, list[int], str]] = [
        (l1, [8, 8, 0, 0], r"sum to 16, over the bound 15"),
        (l1, [0, 0, 0, 16], r"measurement\[3\] = 16 is out of range \[0, 15\]"),
        (l1, [0, 1, 2], r"has 3 entries; this VDAF takes 4"),
        (sum_vec, [15, 15, 15, 16], r"measurement\[3\] = 16 is out of range \[0, 15\]"),
        (sum_vec, [-1, 0, 0, 0], r"measurement\[0\] = -1 is out of range"),
        (sum_vec, [2**130, 0, 0, 0], r"measurement\[0\] = \d+ is out of range"),
        (histogram, [4], r"bucket index 4 is out of range \[0, 4\)"),
        (histogram, [-1], r"bucket index -1"),
        (histogram, [], r"one bucket index, got 0 values"),
    ]
    for vdaf, measurement, message in cases:
        with pytest.raises(MeasurementError, match=message):
            vdaf.shard(CTX, measurement, nonce)
    with pytest.raises(TypeError, match=r"measurement\[1\] must be an int, not str"):
        sum_vec.shard(CTX, [0, "1", 0, 0], nonce)  # type: ignore[list-item]


def test_wrong_sizes_and_ids_are_refused_clearly(vdaf: Prio3, key: bytes) -> None:
    report = shard(vdaf, KINDS[vdaf.kind][1](random.Random(3)))
    with pytest.raises(Prio3Error, match="nonce must be 16 bytes, got 15"):
        vdaf.shard(CTX, KINDS[vdaf.kind][1](random.Random(3)), bytes(15))
    with pytest.raises(Prio3Error, match="verify_key must be 32 bytes, got 16"):
        vdaf.verify_init(key[:16], CTX, 0, report.nonce, report.public_share, report.leader_share)
    with pytest.raises(Prio3Error, match="nonce must be 16 bytes, got 17"):
        vdaf.verify_init(key, CTX, 0, report.nonce + b"x", report.public_share, report.leader_share)
    with pytest.raises(Prio3Error, match=r"agg_id must be 0 \(leader\) or 1 \(helper\), got 2"):
        vdaf.verify_init(key, CTX, 2, report.nonce, report.public_share, report.leader_share)
    with pytest.raises(Prio3Error, match="agg_id must be 0"):
        vdaf.aggregate(-1, [])
    with pytest.raises(Prio3Error, match="num_measurements must be >= 0, got -1"):
        vdaf.unshard(vdaf.aggregate(0, []), vdaf.aggregate(1, []), -1)


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(Prio3Error, match="bits must be between 1 and 64, got 65"):
        Prio3.sum_vec(4, 65, 1)
    with pytest.raises(Prio3Error, match="bits must be between 1 and 64, got 0"):
        Prio3.l1_bound_sum(4, 0, 1)
    with pytest.raises(Prio3Error, match="length must be between 1 and"):
        Prio3.histogram(0, 1)
    with pytest.raises(Prio3Error, match=r"chunk_length must be between 1 and 16 .* got 17"):
        Prio3.sum_vec(4, 4, 17)
    with pytest.raises(Prio3Error, match="exceed 1048576 field elements"):
        Prio3.sum_vec(2**19, 4, 1)


def test_garbage_is_a_decode_error_never_a_panic(vdaf: Prio3, key: bytes) -> None:
    report = shard(vdaf, KINDS[vdaf.kind][1](random.Random(4)))
    n = report.nonce
    entry_points: list[Callable[[bytes], object]] = [
        lambda g: vdaf.verify_init(key, CTX, 0, n, g, report.leader_share),
        lambda g: vdaf.verify_init(key, CTX, 0, n, report.public_share, g),
        lambda g: vdaf.verify_init(key, CTX, 1, n, report.public_share, g),
        lambda g: vdaf.verifier_shares_to_message(CTX, g, g),
        lambda g: vdaf.verify_next(CTX, 0, g, g),
        lambda g: vdaf.verify_next(CTX, 1, g, g),
        lambda g: vdaf.aggregate(0, [g]),
        lambda g: vdaf.merge(g, g),
        lambda g: vdaf.add_noise(g, [0] * vdaf.output_length()),
        lambda g: vdaf.unshard(g, g, 1),
    ]
    # Lengths no message of this VDAF has: always a DecodeError.
    for garbage in [b"", b"\x00", b"\xff" * 31, b"\xff" * 5000]:
        for call in entry_points:
            with pytest.raises(DecodeError, match=r"does not decode \(\d+ bytes\)"):
                call(garbage)
    # Random bytes of every real message length: refused somewhere, always as Prio3Error.
    # (Any other exception, PanicException included, fails the test.)
    rng = random.Random(5)
    for length in {len(report.public_share), len(report.leader_share), 32, 64, 256, 288}:
        for call in entry_points:
            garbage = rng.randbytes(length)
            with contextlib.suppress(Prio3Error):
                call(garbage)


def test_leader_share_given_as_helper_share_does_not_decode(vdaf: Prio3, key: bytes) -> None:
    report = shard(vdaf, KINDS[vdaf.kind][1](random.Random(6)))
    with pytest.raises(DecodeError, match="as the helper share"):
        vdaf.verify_init(key, CTX, 1, report.nonce, report.public_share, report.leader_share)


def test_instances_are_immutable_and_describe_themselves() -> None:
    vdaf = Prio3.l1_bound_sum(16, 4, 6)
    assert (vdaf.kind, vdaf.length, vdaf.bits, vdaf.chunk_length) == ("l1_bound_sum", 16, 4, 6)
    assert (vdaf.verify_key_size, vdaf.nonce_size) == (32, 16)
    assert (Prio3.VERIFY_KEY_SIZE, Prio3.NONCE_SIZE) == (32, 16)
    assert vdaf.output_length() == 16
    assert Prio3.histogram(7, 3).bits == 0
    assert Prio3.histogram(7, 3).kind == "histogram"
    assert Prio3.sum_vec(3, 8, 4).kind == "sum_vec"
    assert P == 2**128 - 28 * 2**64 + 1
    assert repr(vdaf) == "Prio3.l1_bound_sum(length=16, bits=4, chunk_length=6)"
    with pytest.raises(AttributeError):
        vdaf.kind = "sum_vec"  # type: ignore[misc]
    with pytest.raises(TypeError):
        Prio3()


def test_error_tree() -> None:
    for error in (DecodeError, MeasurementError, VerifyError):
        assert issubclass(error, Prio3Error)
    assert issubclass(Prio3Error, ValueError)


def test_threads_share_one_instance(key: bytes) -> None:
    """Detached work on a shared instance from several threads gives the same answers."""
    vdaf = Prio3.sum_vec(16, 4, 8)
    results: list[list[int]] = []

    def work() -> None:
        outs = [verify(vdaf, key, shard(vdaf, [1] * 16)) for _ in range(20)]
        results.append(
            vdaf.unshard(
                vdaf.aggregate(0, [o[0] for o in outs]), vdaf.aggregate(1, [o[1] for o in outs]), 20
            )
        )

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [[20] * 16] * 4


# --- the stub is the typed contract: it and the module must agree -------------------------


def installed_stub() -> Path:
    return Path(quietwire_prio.__file__).with_name("__init__.pyi")


def stub_members(body: list[ast.stmt]) -> dict[str, tuple[str, list[str]]]:
    """Public names defined in a stub body: name -> (kind, parameter names without self)."""
    members: dict[str, tuple[str, list[str]]] = {}
    for node in body:
        if isinstance(node, ast.ClassDef):
            members[node.name] = ("class", [ast.unparse(b) for b in node.bases])
        elif isinstance(node, ast.FunctionDef):
            decorators = {ast.unparse(d) for d in node.decorator_list}
            kind = (
                "property"
                if "property" in decorators
                else "staticmethod"
                if "staticmethod" in decorators
                else "method"
            )
            params = [a.arg for a in node.args.posonlyargs + node.args.args]
            members[node.name] = (kind, params[1:] if kind != "staticmethod" else params)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            members[node.target.id] = ("attribute", [])
    return {name: member for name, member in members.items() if not name.startswith("_")}


def runtime_kind(owner: object, name: str) -> tuple[str, list[str]]:
    raw = inspect.getattr_static(owner, name)
    value = getattr(owner, name)
    if isinstance(value, type):
        return "class", [base.__name__ for base in value.__bases__ if base is not object]
    if isinstance(raw, staticmethod):
        return "staticmethod", list(inspect.signature(value).parameters)
    if inspect.isdatadescriptor(raw):
        return "property", []
    if inspect.ismethoddescriptor(raw):
        return "method", list(inspect.signature(value).parameters)[1:]
    return "attribute", []


def test_stub_and_module_agree() -> None:
    tree = ast.parse(installed_stub().read_text())
    native = importlib.import_module("quietwire_prio.quietwire_prio")
    module_names = {
        n for n in dir(native) if not n.startswith("_") and not inspect.ismodule(getattr(native, n))
    }
    stub = stub_members(tree.body)
    assert set(stub) == module_names
    assert set(native.__all__) == module_names
    for name, (kind, detail) in stub.items():
        assert runtime_kind(native, name) == (kind, detail), name
        assert getattr(quietwire_prio, name) is getattr(native, name)

    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    for name, node in classes.items():
        cls = getattr(native, name)
        own = {n for n in vars(cls) if not n.startswith("_")}
        members = stub_members(node.body)
        assert set(members) == own, name
        for member, (kind, detail) in members.items():
            got = runtime_kind(cls, member)
            assert got == (kind, detail), f"{name}.{member}: stub {kind} {detail}, module {got}"


def test_installed_stub_is_the_repository_stub() -> None:
    """A stale install (an edit not rebuilt) would make the other tests check the wrong stub."""
    source = Path(__file__).parents[2] / "prio3" / "quietwire_prio.pyi"
    assert installed_stub().read_text() == source.read_text()
    assert installed_stub().with_name("py.typed").exists()
