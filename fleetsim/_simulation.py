"""A simulated fleet of desktop AI app installs, for the demo and the integration tests.

Pure data: it says what each device's app did in each window (inference events with a
route, a model version, latency, tokens and failures). Feeding those events through the
real client is the caller's job. The fleet is deliberately uneven, like a real one: a
few heavy users, a canary cohort on a newer model version that is 30% slower on the local
route and fails 4% of its requests there (the stable version: 0.5%).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

__all__ = [
    "MODEL_CANARY",
    "MODEL_STABLE",
    "ROUTES",
    "SIX_HOURS",
    "DeviceProfile",
    "FleetSpec",
    "InferenceEvent",
    "device_profiles",
    "iter_fleet",
    "simulate_window",
]

SIX_HOURS = 21_600
"""The period `DeviceProfile.requests_per_window` counts requests over."""
ROUTES = ("local", "edge", "cloud")
MODEL_STABLE = "qwen2.5-7b@1.0"
MODEL_CANARY = "qwen2.5-7b@1.1"

# Median latency (s) and failure rate per route for the stable model.
_LATENCY_MEDIAN = {"local": 0.8, "edge": 0.35, "cloud": 1.2}
_FAILURE_RATE = {"local": 0.005, "edge": 0.01, "cloud": 0.02}
# The canary regresses on the local route: 30% slower, and 4% of its requests fail
# (+3.5 percentage points on the stable version's 0.5%).
_CANARY_LOCAL_SLOWDOWN = 1.3
_CANARY_LOCAL_FAILURE = 0.04


@dataclass(frozen=True, slots=True)
class FleetSpec:
    devices: int = 200
    windows: int = 6
    canary_share: float = 0.25
    regions: tuple[str, ...] = ("eu",)
    seed: int = 7


@dataclass(frozen=True, slots=True)
class DeviceProfile:
    index: int
    region: str
    model: str
    route_mix: tuple[float, float, float]
    requests_per_window: float
    """Mean requests per six hours (`SIX_HOURS`); a window of another length scales it."""


@dataclass(frozen=True, slots=True)
class InferenceEvent:
    route: str
    model: str
    latency_s: float
    tokens: int
    failed: bool


def device_profiles(spec: FleetSpec) -> list[DeviceProfile]:
    """Stable per-device traits, drawn once from the spec's seed."""
    rng = np.random.default_rng(spec.seed)
    profiles = []
    for i in range(spec.devices):
        mix = rng.dirichlet((4.0, 2.0, 3.0))
        profiles.append(
            DeviceProfile(
                index=i,
                region=spec.regions[i % len(spec.regions)],
                model=MODEL_CANARY if rng.random() < spec.canary_share else MODEL_STABLE,
                route_mix=(float(mix[0]), float(mix[1]), float(mix[2])),
                # Heavy-tailed activity: most devices are light users, a few are heavy.
                requests_per_window=float(rng.gamma(shape=1.5, scale=14.0)),
            )
        )
    return profiles


def simulate_window(
    profile: DeviceProfile, window: int, seed: int, window_seconds: int = SIX_HOURS
) -> list[InferenceEvent]:
    """The inference events of one device in one window of `window_seconds` (deterministic
    per seed): `requests_per_window` is the device's rate per six hours, scaled."""
    rng = np.random.default_rng((seed, profile.index, window))
    n = int(rng.poisson(profile.requests_per_window * window_seconds / SIX_HOURS))
    events = []
    for route_idx in rng.choice(3, size=n, p=profile.route_mix):
        route = ROUTES[int(route_idx)]
        median = _LATENCY_MEDIAN[route]
        failure = _FAILURE_RATE[route]
        if profile.model == MODEL_CANARY and route == "local":
            median *= _CANARY_LOCAL_SLOWDOWN
            failure = _CANARY_LOCAL_FAILURE
        events.append(
            InferenceEvent(
                route=route,
                model=profile.model,
                latency_s=float(rng.lognormal(np.log(median), 0.5)),
                tokens=int(rng.lognormal(np.log(300.0), 0.9)) + 1,
                failed=bool(rng.random() < failure),
            )
        )
    return events


def iter_fleet(spec: FleetSpec) -> Iterator[tuple[int, DeviceProfile, list[InferenceEvent]]]:
    """(window, device, events) for every window and device of the fleet."""
    profiles = device_profiles(spec)
    for w in range(spec.windows):
        for p in profiles:
            yield w, p, simulate_window(p, w, spec.seed)
