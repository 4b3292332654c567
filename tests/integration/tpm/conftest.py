"""Fixtures on a real software TPM: one provisioning per session, a fresh TPM per test.

Provisioning (swtpm_setup with a temporary swtpm_localca CA) takes about a second, so it
runs once; each test gets its own swtpm process serving a copy of that state (tens of
milliseconds), so PCR extensions or keys from one test never leak into another.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest.attestation import EkTrustAnchors
from tests.harness.swtpm import SwtpmInstance, SwtpmProvision, provision_swtpm


@pytest.fixture(scope="session")
def swtpm_provision(tmp_path_factory: pytest.TempPathFactory) -> SwtpmProvision:
    """A manufactured TPM state with an EK certificate chain, shared by the session."""
    return provision_swtpm(tmp_path_factory.mktemp("swtpm") / "provision")


@pytest.fixture
def swtpm(swtpm_provision: SwtpmProvision) -> Iterator[SwtpmInstance]:
    """A running swtpm with its own copy of the provisioned state."""
    with SwtpmInstance(swtpm_provision) as instance:
        yield instance


@pytest.fixture
def ek_anchors(swtpm: SwtpmInstance) -> EkTrustAnchors:
    """Trust in the swtpm CA: its root, with its issuer as the known intermediate."""
    return EkTrustAnchors.from_pem_files([swtpm.root_cert], [swtpm.issuer_cert])


@pytest.fixture
def key_dir(tmp_path: Path) -> Path:
    """Where the device's TpmKeyStore keeps its key blobs."""
    return tmp_path / "device-keys"
