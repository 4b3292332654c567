"""The audit log package's public door: a test pins the exported names."""

import auditlog


def test_exported_names() -> None:
    assert set(auditlog.__all__) == {
        "AUDIT_ACTIONS",
        "GENESIS_HASH",
        "AuditDecision",
        "AuditEntry",
        "AuditLog",
        "AuditLogError",
        "AuditRecord",
        "AuditReport",
        "ChainReport",
        "Checkpoint",
        "CheckpointSigner",
        "checkpoint_message",
        "checkpoint_signer",
        "entry_hash",
        "parse_audit_key",
        "verify_checkpoints",
        "verify_entries",
        "verify_log",
    }
    for name in auditlog.__all__:
        assert getattr(auditlog, name) is not None
