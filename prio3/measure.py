"""Per-report costs of the Prio3 binding, measured from Python (not a test).

    uv run --frozen python prio3/measure.py [--length 16] [--bits 4] [--chunk-length 10]

Prints medians over many reports for each role's step, the message sizes, and whether two
threads aggregating at once overlap (the binding releases the GIL while it works).
"""

import argparse
import os
import statistics
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from quietwire_prio import Prio3

CTX = b"quietwire/measure"
T = TypeVar("T")


def median_us(samples: list[int]) -> float:
    return statistics.median(samples) / 1000


def timed(into: list[int], fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)``, its duration appended to ``into`` (ns)."""
    start = time.perf_counter_ns()
    result = fn(*args)
    into.append(time.perf_counter_ns() - start)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=16)
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--chunk-length", type=int, default=10)
    parser.add_argument("--reports", type=int, default=2000)
    args = parser.parse_args()

    vdaf = Prio3.l1_bound_sum(args.length, args.bits, args.chunk_length)
    key = os.urandom(32)
    measurement = [0] * args.length
    measurement[0], measurement[-1] = 2**args.bits - 2, 1  # at the bound

    steps: dict[str, list[int]] = {
        name: []
        for name in (
            "shard",
            "leader verify_init",
            "helper verify_init",
            "verifier_shares_to_message",
            "leader verify_next",
            "helper verify_next",
        )
    }
    leader_out: list[bytes] = []
    helper_out: list[bytes] = []
    for _ in range(args.reports):
        nonce = os.urandom(16)
        public, leader, helper = timed(steps["shard"], vdaf.shard, CTX, measurement, nonce)
        l_state, l_share = timed(
            steps["leader verify_init"], vdaf.verify_init, key, CTX, 0, nonce, public, leader
        )
        h_state, h_share = timed(
            steps["helper verify_init"], vdaf.verify_init, key, CTX, 1, nonce, public, helper
        )
        message = timed(
            steps["verifier_shares_to_message"],
            vdaf.verifier_shares_to_message,
            CTX,
            l_share,
            h_share,
        )
        leader_out.append(
            timed(steps["leader verify_next"], vdaf.verify_next, CTX, 0, l_state, message)
        )
        helper_out.append(
            timed(steps["helper verify_next"], vdaf.verify_next, CTX, 1, h_state, message)
        )
    sizes = {
        "public share": len(public),
        "leader input share": len(leader),
        "helper input share": len(helper),
        "leader verify state": len(l_state),
        "helper verify state": len(h_state),
        "leader verifier share": len(l_share),
        "helper verifier share": len(h_share),
        "verifier message": len(message),
        "output share": len(leader_out[0]),
    }

    agg: list[int] = []
    for _ in range(20):
        leader_agg = timed(agg, vdaf.aggregate, 0, leader_out)
    helper_agg = vdaf.aggregate(1, helper_out)
    sizes["aggregate share"] = len(leader_agg)
    noise = [-3] * vdaf.output_length()
    noise_t: list[int] = []
    merge_t: list[int] = []
    unshard_t: list[int] = []
    for _ in range(200):
        noised = timed(noise_t, vdaf.add_noise, leader_agg, noise)
        timed(merge_t, vdaf.merge, leader_agg, helper_agg)
        result = timed(unshard_t, vdaf.unshard, noised, helper_agg, args.reports)
    assert result[0] == args.reports * measurement[0] - 3, result

    print(f"{vdaf!r}, {args.reports} reports, medians")
    for name, samples in steps.items():
        print(f"  {name:<28} {median_us(samples):8.1f} µs")
    print(f"  {'aggregate, per report':<28} {median_us(agg) / args.reports * 1000:8.1f} ns")
    print(f"  {'add_noise, per share':<28} {median_us(noise_t):8.1f} µs")
    print(f"  {'merge':<28} {median_us(merge_t):8.1f} µs")
    print(f"  {'unshard':<28} {median_us(unshard_t):8.1f} µs")
    print("bytes")
    for name, size in sizes.items():
        print(f"  {name:<28} {size:8,}")

    # Aggregating many shares releases the GIL: two threads should overlap on two cores.
    many = leader_out * 50

    def wall(threads: int) -> float:
        """Best of five: seconds for `threads` threads each aggregating `many` at once."""
        best = float("inf")
        for _ in range(5):
            workers = [
                threading.Thread(target=vdaf.aggregate, args=(0, many)) for _ in range(threads)
            ]
            start = time.perf_counter()
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            best = min(best, time.perf_counter() - start)
        return best

    one, two = wall(1), wall(2)
    print(
        f"aggregate of {len(many):,} shares: {one * 1000:.1f} ms in one thread; "
        f"two threads doing it at once {two * 1000:.1f} ms (serial would be {2 * one * 1000:.1f})"
    )


if __name__ == "__main__":
    main()
