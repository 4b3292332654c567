"""A revocation's deletion request is queued unsigned and signed when it is sent.

`revoke_consent` runs on the app's thread, where no TPM may be waited on; the sending
thread signs the request with the key in use then, and a restart in between loses it
not: it waits in the spool, unsigned, encrypted like the envelopes.
"""

from __future__ import annotations

from pathlib import Path

from nacl.signing import VerifyKey

from client import MemoryTransport, SoftwareKeyStore, TransportError
from schemas import (
    BatchResult,
    DeletionReceipt,
    DeletionRequestV1,
    EnvelopeBatch,
    SignedDeletionRequest,
    Tier,
)
from tests.client.conftest import FakeClock, MakeTelemetry, MemoryIngest


def test_a_deletion_request_queued_offline_is_signed_and_sent_after_a_restart(
    tmp_path: Path, make_telemetry: MakeTelemetry, clock: FakeClock, ingest: MemoryIngest
) -> None:
    state = tmp_path / "device"

    def offline(_request: SignedDeletionRequest) -> DeletionReceipt | None:
        raise TransportError("offline")

    def no_envelopes(_batch: EnvelopeBatch) -> BatchResult:
        raise TransportError("offline")

    qw = make_telemetry(
        transport=MemoryTransport(no_envelopes, offline), state_dir=state, max_attempts=1
    )
    device_id = qw.device_id
    qw.revoke_consent(Tier.PERFORMANCE)
    assert not qw.flush()
    qw.shutdown(carry_open_window=False, timeout=0.1)
    assert [p.suffix for p in (state / "spool").iterdir() if p.suffix in {".req", ".del"}] == [
        ".req"
    ]

    received: list[SignedDeletionRequest] = []

    def record(request: SignedDeletionRequest) -> DeletionReceipt:
        received.append(request)
        request_id = DeletionRequestV1.model_validate_json(request.payload).request_id
        return DeletionReceipt(request_id=request_id)

    again = make_telemetry(
        transport=MemoryTransport(ingest.handle, record), state_dir=state, consent=()
    )
    assert again.flush()
    (signed,) = received
    VerifyKey(SoftwareKeyStore(state).public_key()).verify(signed.payload, signed.signature)
    request = DeletionRequestV1.model_validate_json(signed.payload)
    assert (request.device_id, request.tier) == (device_id, Tier.PERFORMANCE)
    assert not any(p.suffix in {".req", ".del"} for p in (state / "spool").iterdir())
