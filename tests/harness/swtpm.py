"""A real software TPM 2.0 (swtpm on libtpms) for tests, with an EK certificate chain.

`provision_swtpm(workdir)` runs ``swtpm_setup --tpm2 --create-ek-cert
--create-platform-cert`` with a config that points ``swtpm_localca`` at a CA folder inside
`workdir`, so tests never touch ``/var/lib/swtpm-localca``. The result holds the TPM
state (RSA 2048 EK persisted at 0x81010001 with its certificate in NV 0x01c00002, and an
ECC P-384 EK at 0x81010016 with its certificate in NV 0x01c00016) and the CA's root and
issuer certificates.

`SwtpmInstance` serves a TPM on a free loopback port pair. Given a `SwtpmProvision` it
copies that state (milliseconds), so a session can provision once (about 1.5 s, mostly
the CA's RSA key generation) and hand every test a fresh TPM with the same EK:

    provision = provision_swtpm(tmp_path)
    with SwtpmInstance(provision) as tpm:
        ESAPI(tpm.tcti)  # "swtpm:host=127.0.0.1,port=P"

Without one it provisions its own state and CA first.

Errors: `SwtpmHarnessError` is the root; `SwtpmSetupError` (swtpm_setup failed, with its
log) and `SwtpmStartError` (swtpm did not come up, with its output).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from tpm2_pytss import ESAPI
from tpm2_pytss.TSS2_Exception import TSS2_Exception

__all__ = [
    "SwtpmHarnessError",
    "SwtpmInstance",
    "SwtpmProvision",
    "SwtpmSetupError",
    "SwtpmStartError",
    "provision_swtpm",
]

_ROOT_CERT = "swtpm-localca-rootca-cert.pem"
_ISSUER_CERT = "issuercert.pem"
_START_ATTEMPTS = 5
_READY_DEADLINE_S = 10.0
# Waiting on the process doubles as the pause between readiness probes: it returns at
# once if swtpm died (a lost port race), which a sleep would not notice.
_PROBE_WAIT_S = 0.01


class SwtpmHarnessError(Exception):
    """Root of the errors the swtpm test harness raises."""


class SwtpmSetupError(SwtpmHarnessError):
    """swtpm_setup could not provision a TPM state; the message carries its log."""


class SwtpmStartError(SwtpmHarnessError):
    """swtpm did not start serving; the message carries its output."""


@dataclass(frozen=True)
class SwtpmProvision:
    """A manufactured TPM state and the local CA that signed its EK certificates."""

    state_dir: Path
    ca_dir: Path

    @property
    def root_cert(self) -> Path:
        """The CA root certificate (PEM), the trust anchor of the EK certificates."""
        return self.ca_dir / _ROOT_CERT

    @property
    def issuer_cert(self) -> Path:
        """The CA's intermediate (PEM) that signs the EK and platform certificates."""
        return self.ca_dir / _ISSUER_CERT


def provision_swtpm(workdir: Path) -> SwtpmProvision:
    """Manufacture a TPM 2.0 state with EK and platform certificates under `workdir`."""
    for tool in ("swtpm", "swtpm_setup", "swtpm_localca"):
        if shutil.which(tool) is None:
            raise SwtpmSetupError(
                f"{tool} not found: install the Debian packages swtpm swtpm-tools"
            )
    workdir.mkdir(parents=True, exist_ok=True)
    state_dir = workdir / "state"
    ca_dir = workdir / "ca"
    state_dir.mkdir()
    ca_dir.mkdir()
    localca_conf = workdir / "swtpm-localca.conf"
    localca_conf.write_text(
        f"statedir = {ca_dir}\n"
        f"signingkey = {ca_dir / 'signkey.pem'}\n"
        f"issuercert = {ca_dir / _ISSUER_CERT}\n"
        f"certserial = {ca_dir / 'certserial'}\n"
    )
    localca_options = workdir / "swtpm-localca.options"
    localca_options.write_text(
        "--platform-manufacturer Quietwire\n--platform-version 2.1\n--platform-model swtpm\n"
    )
    setup_conf = workdir / "swtpm_setup.conf"
    setup_conf.write_text(
        f"create_certs_tool = {shutil.which('swtpm_localca')}\n"
        f"create_certs_tool_config = {localca_conf}\n"
        f"create_certs_tool_options = {localca_options}\n"
        "active_pcr_banks = sha256\n"
    )
    log = workdir / "swtpm_setup.log"
    result = subprocess.run(
        [
            "swtpm_setup",
            "--tpm2",
            "--tpmstate",
            str(state_dir),
            "--create-ek-cert",
            "--create-platform-cert",
            "--pcr-banks",
            "sha256",
            "--config",
            str(setup_conf),
            "--logfile",
            str(log),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    provision = SwtpmProvision(state_dir=state_dir, ca_dir=ca_dir)
    if result.returncode != 0 or not provision.root_cert.exists():
        log_text = log.read_text() if log.exists() else ""
        raise SwtpmSetupError(
            f"swtpm_setup exited {result.returncode}: {result.stderr.strip()}\n{log_text}"
        )
    return provision


def _free_port_pair() -> int:
    """A loopback port P such that P and P+1 were both free a moment ago."""
    while True:
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            if port >= 65535:
                continue
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port


class SwtpmInstance:
    """A running ``swtpm socket`` on 127.0.0.1, stopped on exit. Not reentrant."""

    def __init__(self, provision: SwtpmProvision | None = None) -> None:
        self._template = provision
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._provision: SwtpmProvision | None = None
        self.port = 0

    @property
    def tcti(self) -> str:
        """The TCTI string tpm2-pytss connects with."""
        return f"swtpm:host=127.0.0.1,port={self.port}"

    @property
    def provision(self) -> SwtpmProvision:
        """The state and CA this instance serves (its own copy of the state)."""
        if self._provision is None:
            raise SwtpmHarnessError("the instance is not running")
        return self._provision

    @property
    def root_cert(self) -> Path:
        """The CA root certificate (PEM) the EK certificate chains to."""
        return self.provision.root_cert

    @property
    def issuer_cert(self) -> Path:
        """The CA's issuer certificate (PEM) that signed the EK certificate."""
        return self.provision.issuer_cert

    def __enter__(self) -> Self:
        self._tmp = tempfile.TemporaryDirectory(prefix="qw-swtpm-")
        workdir = Path(self._tmp.name)
        try:
            if self._template is None:
                self._provision = provision_swtpm(workdir / "provision")
            else:
                state = workdir / "state"
                shutil.copytree(self._template.state_dir, state)
                self._provision = SwtpmProvision(state_dir=state, ca_dir=self._template.ca_dir)
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _start(self) -> None:
        assert self._provision is not None
        output = ""
        for _ in range(_START_ATTEMPTS):
            self.port = _free_port_pair()
            self._process = subprocess.Popen(
                [
                    "swtpm",
                    "socket",
                    "--tpm2",
                    "--server",
                    f"type=tcp,port={self.port},bindaddr=127.0.0.1",
                    "--ctrl",
                    f"type=tcp,port={self.port + 1},bindaddr=127.0.0.1",
                    "--tpmstate",
                    f"dir={self._provision.state_dir}",
                    "--flags",
                    "not-need-init,startup-clear",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            if self._wait_ready():
                return
            # Lost the port race (or swtpm failed): collect why and try another pair.
            output = self._reap()
        raise SwtpmStartError(f"swtpm did not start after {_START_ATTEMPTS} attempts: {output}")

    def _wait_ready(self) -> bool:
        """Retry until a tpm2-pytss session answers; False if swtpm exited or timed out."""
        assert self._process is not None
        deadline = _READY_DEADLINE_S / _PROBE_WAIT_S
        for _ in range(int(deadline)):
            if self._port_open():
                try:
                    with ESAPI(self.tcti) as ectx:
                        ectx.get_random(1)
                    return True
                except TSS2_Exception:
                    pass
            try:
                self._process.wait(timeout=_PROBE_WAIT_S)
                return False
            except subprocess.TimeoutExpired:
                continue
        return False

    def _port_open(self) -> bool:
        # A plain connect first: the TSS logs every refused connection to stderr, and
        # swtpm binds before it serves, so this keeps the log quiet while it starts. The
        # probe must be closed before the TSS connects: swtpm serves one client at a time.
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def _reap(self) -> str:
        process, self._process = self._process, None
        if process is None:
            return ""
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        out = process.stdout.read() if process.stdout else b""
        if process.stdout:
            process.stdout.close()
        return out.decode(errors="replace").strip()

    def stop(self) -> None:
        """Stop swtpm and remove this instance's state copy; safe to call twice."""
        self._reap()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        self._provision = None
