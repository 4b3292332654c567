"""The ingest's web apps export no request telemetry of their own.

FastAPI traces, meters and logs every request through OpenTelemetry as soon as a
provider is configured in the process (by an operator's auto-instrumentation, say). A
trace of every device request (its source address, path and timing, kept by a tracing
backend) is data about devices that the privacy design does not account for, so the
ingest and the helper switch it off explicitly; operators read the audit log, the
metrics of `/healthz` and the logs instead. Switched off, FastAPI also stops asking on
every request whether a provider has been configured meanwhile (about 6 µs of CPU each
time, once per envelope at batch 1).
"""

from __future__ import annotations

from fastapi.telemetry import TelemetryConfig

__all__ = ["NO_REQUEST_TELEMETRY"]

NO_REQUEST_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}
