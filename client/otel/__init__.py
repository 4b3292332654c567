"""Quietwire behind the OpenTelemetry metrics API (the optional extra `quietwire[otel]`).

Apps already instrumented with OpenTelemetry switch by changing their set-up only:

    from opentelemetry import metrics
    from client.otel import QuietwireMeterProvider

    metrics.set_meter_provider(QuietwireMeterProvider(telemetry))
    meter = metrics.get_meter("notes-ai")
    duration = meter.create_histogram("gen_ai.client.operation.duration", unit="s")
    duration.record(0.42, {"gen_ai.request.model": "qwen2.5-7b@1.1", "route": "local"})

The policy's `otel` section maps instruments and attributes onto its signals; anything
it does not declare is dropped and counted (`Telemetry.dropped()`). Depends on
`opentelemetry-api` only, never the SDK. Exemplars, views, metric readers and
exporters are not supported: see docs/client.md.
"""

from client.otel._meter import QuietwireMeter, QuietwireMeterProvider

__all__ = ["QuietwireMeter", "QuietwireMeterProvider"]
