"""Two processes append to one audit log (the ingest and the aggregation job): the chain
stays one chain."""

from __future__ import annotations

from pathlib import Path

from ingest import AuditLog, AuditRecord


def test_two_writers_of_one_file_keep_one_valid_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    ingest, aggregation = AuditLog(path), AuditLog(path)
    try:
        for i in range(3):
            ingest.append(AuditRecord("envelope", "accepted", device_id=f"d{i}"))
            aggregation.append_many(
                [AuditRecord("aggregation_job", "accepted"), AuditRecord("prio_report", "rejected")]
            )
        assert ingest.head() == aggregation.head()
        auditor = AuditLog(path, read_only=True)
        report = auditor.verify_chain(expected_head=ingest.head())
        auditor.close()
    finally:
        ingest.close()
        aggregation.close()
    assert report.ok
    assert report.entries == 9
