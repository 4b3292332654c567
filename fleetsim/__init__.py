"""The fleet simulator and the demo's wiring: simulated devices run through the real
client, ingest, sink and warehouse, and the analytics report is checked against the
simulated truth.

It sits downstream of every other package (it drives client and ingest and reads with
analytics), so nothing imports it but the `quietwire` command line, tests and benchmarks.
"""

from fleetsim._demo import run_demo
from fleetsim._pipeline import FleetRun, run_fleet
from fleetsim._simulation import FleetSpec

__all__ = ["FleetRun", "FleetSpec", "run_demo", "run_fleet"]
