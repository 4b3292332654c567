"""The subpackage's public door: a test pins the exported names."""

import ingest.aggregation


def test_exported_names() -> None:
    assert set(ingest.aggregation.__all__) == {
        "DEVELOPMENT_VERIFY_KEY",
        "EMPTY_CHECKSUM",
        "AggregationJobRequest",
        "AggregationJobResponse",
        "AggregationRefused",
        "AggregationService",
        "BatchCollector",
        "BatchKey",
        "CollectionRequest",
        "CollectionResponse",
        "DiscreteLaplaceNoise",
        "HelperAggregator",
        "HelperBatch",
        "HelperClient",
        "HelperKeyInfo",
        "HelperProtocolError",
        "HelperSettings",
        "HelperStore",
        "HelperUnavailable",
        "LeaderAggregator",
        "LeaderSettings",
        "NoiseDraw",
        "NoiseSource",
        "ReportInit",
        "ReportReason",
        "ReportResult",
        "RunStats",
        "TaskCatalog",
        "add_noise",
        "aggregate_all",
        "batch_checksum",
        "create_helper_app",
        "discrete_laplace_measurement",
        "fleet_rows",
        "job_id_for",
        "load_helper_key",
        "parse_verify_key",
        "serve_helper",
        "task_vdaf",
        "task_verify_key",
    }
    for name in ingest.aggregation.__all__:
        assert getattr(ingest.aggregation, name) is not None


def test_refusals_are_4xx_and_unavailability_is_not() -> None:
    from ingest import IngestError, RequestRejected

    refused = ingest.aggregation.AggregationRefused("batch_too_small", "x", status_code=409)
    assert isinstance(refused, RequestRejected)
    assert (refused.status_code, refused.reason) == (409, "batch_too_small")
    assert issubclass(ingest.aggregation.HelperUnavailable, IngestError)
    assert not issubclass(ingest.aggregation.HelperUnavailable, RequestRejected)
