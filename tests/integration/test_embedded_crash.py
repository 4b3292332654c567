"""A killed embedded ingest loses nothing it answered 202 for, and stores it once.

The real service (`python -m ingest serve`, embedded sink, its outbox on disk) takes
batches of real sealed, signed envelopes, answers 202, and is killed with SIGKILL before
its drain has stored any of them (the drain interval is a minute). Whatever the kill
left, the next start stores every answered envelope exactly once: also when the last
outbox segment ends in a torn frame (an append the kill cut short, never answered),
which the start cuts off.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import httpx
import pytest
from nacl.public import PublicKey

from ingest import Outbox
from tests.harness.net import free_port
from tests.ingest.kit import SERVED_POLICIES, Device

REGION = "eu-test"
DEVICES = 12
BATCH = 4


@contextmanager
def _ingest(state: Path, *, drain_seconds: float) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The service on a free port, until the block ends (then SIGINT: a clean stop,
    unless the block killed it)."""
    port = free_port()
    env = {
        **os.environ,
        "QUIETWIRE_INGEST_REGION": REGION,
        "QUIETWIRE_INGEST_STATE_DIR": str(state),
        "QUIETWIRE_INGEST_POLICY_PATHS": json.dumps([str(p) for p in SERVED_POLICIES]),
        "QUIETWIRE_INGEST_OUTBOX_DRAIN_SECONDS": str(drain_seconds),
    }
    log = open(state.parent / f"ingest-{port}.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ingest", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"the ingest exited: {proc.returncode}")
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("the ingest did not come up")
            time.sleep(0.1)
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def _stored(warehouse: Path) -> list[tuple[str, str]]:
    conn = duckdb.connect(str(warehouse), read_only=True)
    try:
        rows = conn.execute(
            "SELECT device_id, CAST(envelope_id AS VARCHAR) FROM envelopes"
        ).fetchall()
    finally:
        conn.close()
    return sorted((str(d), str(e)) for d, e in rows)


@pytest.mark.parametrize("torn", [False, True], ids=["clean-kill", "torn-last-append"])
def test_a_killed_embedded_ingest_stores_every_answered_envelope_once(
    tmp_path: Path, torn: bool
) -> None:
    state = tmp_path / "ingest"
    state.mkdir()
    devices = [Device(REGION) for _ in range(DEVICES)]
    answered: list[tuple[str, str]] = []
    with _ingest(state, drain_seconds=60) as (base, proc):
        published = httpx.get(f"{base}/v1/ingest-key", timeout=10).json()["public_key"]
        key = PublicKey(base64.b64decode(published))
        for start in range(0, DEVICES, BATCH):
            for device in devices[start : start + BATCH]:
                envelope = device.envelope()
                body = {"envelopes": [device.item(key, envelope)]}
                resp = httpx.post(f"{base}/v1/envelopes", json=body, timeout=30)
                assert resp.status_code == 202, resp.text
                answered.append((device.device_id, envelope["envelope_id"]))
        proc.kill()  # SIGKILL: no drain, no clean close of anything
        proc.wait()
    assert Outbox.pending(state / Outbox.DIR_NAME) == DEVICES  # durable, none drained
    if torn:
        segment = sorted((state / Outbox.DIR_NAME).glob("*.log"))[-1]
        with open(segment, "ab") as fh:  # half a frame: an append the kill cut short
            fh.write(b"\x2a" * 21)
    with _ingest(state, drain_seconds=0.05):
        pass  # the start queues what the outbox holds; the clean stop drains it all
    assert Outbox.pending(state / Outbox.DIR_NAME) == 0
    assert _stored(state / "warehouse.duckdb") == sorted(answered)
