"""The actions an audit entry records are one list, which the auditor's tools check
`--action` against: a writer cannot record an action that list lacks."""

from __future__ import annotations

import pytest

from auditlog import AUDIT_ACTIONS, AuditRecord


def test_every_action_is_described() -> None:
    assert AUDIT_ACTIONS
    for action, what in AUDIT_ACTIONS.items():
        assert action == action.strip().lower()
        assert what


def test_the_actions_the_ingest_and_retention_write_are_listed() -> None:
    # The ingest (attestation, envelopes, client reports, deletions), the leader, the
    # helper and `quietwire retention`.
    for action in (
        "enroll", "activate", "nonce", "attest", "revoke", "envelope", "client_report",
        "deletion", "retention", "prio_report", "aggregation_job", "batch_collection",
        "helper_job", "helper_report", "helper_collection",
    ):  # fmt: skip
        AuditRecord(action, "accepted")


def test_a_record_of_an_unlisted_action_is_refused() -> None:
    with pytest.raises(ValueError, match="'enrol' is not one of AUDIT_ACTIONS"):
        AuditRecord("enrol", "accepted")
