"""HTTP delivery: accepted, rejected per item (never retried), retried on 5xx."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from client import HttpTransport, TransportError
from schemas import BatchResult, EnvelopeBatch, ItemResult, RejectReason, SignedDeletionRequest
from tests.client.conftest import MakeTelemetry, MemoryIngest


class Ingest:
    """An httpx.MockTransport handler that answers from a script of status codes."""

    def __init__(self, ingest: MemoryIngest, statuses: list[int]) -> None:
        self.ingest = ingest
        self.statuses = statuses
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        assert request.url.path == "/v1/envelopes"
        status = self.statuses.pop(0) if self.statuses else 202
        if status >= 500:
            return httpx.Response(status, text="unavailable")
        batch = EnvelopeBatch.model_validate_json(request.content)
        results = []
        for i, item in enumerate(batch.envelopes):
            _envelope, _ = self.ingest.open(item)
            if status == 202:
                results.append(ItemResult(index=i, status="accepted"))
            else:
                results.append(
                    ItemResult(index=i, status="rejected", reason=RejectReason.WRONG_REGION)
                )
        accepted = sum(r.status == "accepted" for r in results)
        body = BatchResult(accepted=accepted, rejected=len(results) - accepted, results=results)
        return httpx.Response(status, content=body.model_dump_json())


def _transport(handler: Ingest) -> HttpTransport:
    client = httpx.Client(transport=httpx.MockTransport(handler))
    return HttpTransport("https://ingest.test/", client=client)


def test_accepted_batch(make_telemetry: MakeTelemetry, clock, ingest) -> None:
    handler = Ingest(ingest, [202])
    qw = make_telemetry(transport=_transport(handler))
    qw.collect(clock.advance(hours=2))
    assert qw.pending == 2
    assert qw.flush()
    assert qw.pending == 0
    (request,) = handler.requests
    assert len(json.loads(request.content)["envelopes"]) == 2
    assert qw.dropped() == {}


def test_rejected_items_are_counted_and_not_retried(make_telemetry, clock, ingest) -> None:
    handler = Ingest(ingest, [400])
    qw = make_telemetry(transport=_transport(handler))
    qw.collect(clock.advance(hours=1))
    assert qw.flush()
    assert len(handler.requests) == 1
    assert qw.pending == 0
    assert qw.dropped() == {"rejected:wrong_region": 1}


def test_server_errors_are_retried(make_telemetry, clock, ingest) -> None:
    handler = Ingest(ingest, [503, 500, 202])
    qw = make_telemetry(transport=_transport(handler))
    (envelope,) = qw.collect(clock.advance(hours=1))
    assert qw.flush()
    assert len(handler.requests) == 3
    # The same envelope (same id) is what finally lands.
    batch = EnvelopeBatch.model_validate_json(handler.requests[-1].content)
    assert ingest.open(batch.envelopes[0])[0].envelope_id == envelope.envelope_id


def test_envelopes_stay_pending_while_the_ingest_is_down(make_telemetry, clock, ingest) -> None:
    handler = Ingest(ingest, [503] * 10)
    qw = make_telemetry(transport=_transport(handler), max_attempts=3)
    qw.collect(clock.advance(hours=1))
    assert not qw.flush()
    assert len(handler.requests) == 3
    assert qw.pending == 1  # kept for the next flush, not lost
    handler.statuses.clear()  # the ingest is back
    assert qw.flush()
    assert qw.pending == 0


def test_network_errors_and_retryable_statuses_raise_transport_error() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    batch = EnvelopeBatch(envelopes=["AAAA"])
    transport = HttpTransport(
        "https://ingest.test", client=httpx.Client(transport=httpx.MockTransport(refuse))
    )
    with pytest.raises(TransportError, match="connection refused"):
        transport.send(batch)
    for status in (429, 502):
        limited = HttpTransport(
            "https://ingest.test",
            client=httpx.Client(
                transport=httpx.MockTransport(lambda r, s=status: httpx.Response(s))
            ),
        )
        with pytest.raises(TransportError) as err:
            limited.send(batch)
        assert err.value.status_code == status


def test_an_invalid_batch_answer_without_a_batch_result_rejects_every_item() -> None:
    for status in (400, 422):
        transport = HttpTransport(
            "https://ingest.test",
            client=httpx.Client(
                transport=httpx.MockTransport(lambda r, s=status: httpx.Response(s))
            ),
        )
        result = transport.send(EnvelopeBatch(envelopes=["AAAA", "BBBB"]))
        assert result.rejected == 2
        assert {r.detail for r in result.results} == {f"http_{status}"}


@pytest.mark.parametrize("status", [401, 403, 404, 405, 408, 409, 410, 413, 425, 429, 451])
def test_any_other_whole_batch_4xx_is_retried_later(status: int) -> None:
    """Proxies, gateways and rate limits answer these; none judges the envelopes."""
    transport = HttpTransport(
        "https://ingest.test",
        client=httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(status))),
    )
    with pytest.raises(TransportError) as err:
        transport.send(EnvelopeBatch(envelopes=["AAAA", "BBBB"]))
    assert err.value.status_code == status


def test_full_outbox_drops_and_counts(make_telemetry, clock) -> None:
    qw = make_telemetry(max_pending=2)
    qw.collect(clock.advance(hours=3))
    assert qw.pending == 2
    assert qw.dropped() == {"queue_full": 1}


def test_a_deletion_request_is_dropped_only_when_the_ingest_refuses_it() -> None:
    request = SignedDeletionRequest(
        public_key=base64.b64encode(bytes(32)),
        payload=base64.b64encode(b"{}"),
        signature=base64.b64encode(bytes(64)),
    )

    def answering(status: int) -> HttpTransport:
        return HttpTransport(
            "https://ingest.test",
            client=httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(status))),
        )

    for status in (400, 422):  # the ingest judged it: sending it again fails the same way
        assert answering(status).send_deletion(request) is None
    for status in (401, 403, 404, 409, 413, 429, 503):  # a proxy, a gateway, a rate limit
        with pytest.raises(TransportError) as err:
            answering(status).send_deletion(request)
        assert err.value.status_code == status


def test_a_deletion_request_ahead_of_the_ingests_clock_is_kept_and_sent_again() -> None:
    """A device whose clock runs fast must not lose its revocation: `clock_skew` is
    retried (the request stays pending), every other 422 is final."""
    request = SignedDeletionRequest(
        public_key=base64.b64encode(bytes(32)),
        payload=base64.b64encode(b"{}"),
        signature=base64.b64encode(bytes(64)),
    )

    def answering(reason: str) -> HttpTransport:
        body = {"error": reason, "detail": "test"}
        return HttpTransport(
            "https://ingest.test",
            client=httpx.Client(
                transport=httpx.MockTransport(lambda r: httpx.Response(422, json=body))
            ),
        )

    with pytest.raises(TransportError) as err:
        answering("clock_skew").send_deletion(request)
    assert err.value.status_code == 422
    assert answering("schema_invalid").send_deletion(request) is None
