"""No input makes redaction slow: a fuzz test over adversarial repetitions, and 1 MB.

Time is measured against a plain regex scan of the same text in the same process
(`re.compile(r"\\w+").findall`, median of several runs each), so the machine's speed
cancels out and only the ratio is asserted, plus an absolute floor for timer noise. A
pattern that rescans a run once per position (quadratic) is hundreds of times slower
than linear at these lengths, far past the bounds; linear redaction measured 10x to
50x the scan (16 patterns against one, the worst on long single-letter runs, where the
scan is one match).
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client._redaction import MAX_PROMPT_CHARS, redact
from tests.client.conftest import MakeTelemetry

# Pieces of the redactor's own patterns: scheme and credential separators, e-mail and
# home-folder anchors, number groupings, key names, PEM armour, token prefixes.
FRAGMENTS = (
    "://",
    "@",
    ":",
    "::",
    "1",
    "0",
    "9",
    "a",
    "A",
    "aB3",
    "_",
    "-",
    ".",
    "+",
    " ",
    "=",
    "%",
    "\\",
    "\n",
    '"',
    "'",
    "key=",
    "token: ",
    "password",
    "x@y.zz",
    "http://u:p@",
    "-----BEGIN RSA PRIVATE KEY-----",
    "-----END RSA PRIVATE KEY-----",
    "eyJ",
    "Bearer ",
    "/home/",
    "Users/",
    "C:\\Users\\",
    "+1 ",
    "(415) ",
    "ff:",
    "4111 ",
    "192.168.",
    "AKIA",
    "ghp_",
    "sk-",
    "xoxb-",
)

FUZZ_CHARS = 100_000
RATIO = 400
"""Redaction may take at most this many times the `\\w+` scan of the same text."""
FLOOR_SECONDS = 0.05
"""Plus this, for timer noise and the scheduler on a shared machine."""

_SCAN = re.compile(r"\w+").findall


def median_seconds(run: Callable[[], object], repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def repeated(motifs: list[str], length: int) -> str:
    """Each motif repeated over an equal share of `length` characters, in turn."""
    share = length // len(motifs)
    return "".join((m * (share // len(m) + 1))[:share] for m in motifs)


motif = st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=4).map("".join)


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(motif, min_size=1, max_size=3))
def test_redaction_time_is_bounded_by_a_plain_scan(motifs: list[str]) -> None:
    text = repeated(motifs, FUZZ_CHARS)
    scan = median_seconds(lambda: _SCAN(text))
    took = median_seconds(lambda: redact(text))
    assert took < RATIO * scan + FLOOR_SECONDS, (motifs, took, scan)


def test_quadratic_inputs_found_before_are_linear_now() -> None:
    """Each took seconds at 100,000 characters (minutes at 1 MB) before the fix."""
    for motifs in (["-----BEGIN RSA PRIVATE KEY-----"], ["eyJ-"], ["a_"], ["a://b:"]):
        text = repeated(motifs, FUZZ_CHARS)
        scan = median_seconds(lambda text=text: _SCAN(text))  # type: ignore[misc]
        took = median_seconds(lambda text=text: redact(text))  # type: ignore[misc]
        assert took < RATIO * scan + FLOOR_SECONDS, (motifs, took, scan)


ONE_MB = 1 << 20
ADVERSARIAL_MB = repeated(["".join(FRAGMENTS)], ONE_MB)
"""Every fragment in turn, repeated to 1 MB: every rule's needle is present, so every
pattern runs over the whole text."""


def test_a_1_mb_adversarial_prompt_is_redacted_in_linear_time() -> None:
    """The issue asks for 1 MB in under 50 ms; a `\\w+` scan of 1 MB alone takes 30 to
    100 ms on the shared 2-core machine, and redaction runs 16 patterns, about 12x the
    scan (0.5 to 1.3 s per MB here). So the caller's thread is protected by the cap
    (next test), and the redactor itself is held to linear time: a ratio to the scan,
    and a generous absolute bound."""
    scan = median_seconds(lambda: _SCAN(ADVERSARIAL_MB))
    took = median_seconds(lambda: redact(ADVERSARIAL_MB))
    assert took < 40 * scan + FLOOR_SECONDS, (took, scan)
    assert took < 10.0


def test_a_1_mb_prompt_costs_the_caller_under_50_ms(make_telemetry: MakeTelemetry) -> None:
    qw = make_telemetry()
    took = median_seconds(lambda: qw.record_prompt(ADVERSARIAL_MB), repeats=5)
    assert took < 0.05
    assert qw.dropped() == {"prompt_too_long": 5}


def test_the_longest_prompt_accepted_is_redacted_quickly(make_telemetry: MakeTelemetry) -> None:
    """`MAX_PROMPT_CHARS` of the adversarial text, on the caller's thread: measured 25
    to 70 ms here (12x a scan of it); bounded by the same ratio and 0.5 s."""
    qw = make_telemetry(consent=())
    text = ADVERSARIAL_MB[:MAX_PROMPT_CHARS]
    scan = median_seconds(lambda: _SCAN(text))
    took = median_seconds(lambda: qw.record_prompt(text))
    assert took < 40 * scan + FLOOR_SECONDS, (took, scan)
    assert took < 0.5
    assert "prompt_too_long" not in qw.dropped()
