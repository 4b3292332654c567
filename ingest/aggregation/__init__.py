"""Secure aggregation: the leader's aggregation job and collector, and the helper service.

Prio3 with two aggregators (DAP's design): the ingest is the leader; the helper is a
second operator's service with its own key and state. Neither sees a device's values.

    app = create_helper_app(HelperSettings())       # python -m ingest helper
    service = AggregationService(sink, HelperClient(url, token=...), catalog, verify_key)
    service.run_once(now)                           # python -m ingest aggregate
    aggregate_all(sink, helper, policies, now, verify_key=key)   # embedded, one shot
    with serve_helper(settings, policies=[policy]) as url: ...   # helper on loopback
"""

from ingest.aggregation._batches import EMPTY_CHECKSUM, BatchKey, batch_checksum, job_id_for
from ingest.aggregation._catalog import TaskCatalog
from ingest.aggregation._collector import BatchCollector, fleet_rows
from ingest.aggregation._embedded import serve_helper
from ingest.aggregation._errors import AggregationRefused, HelperProtocolError, HelperUnavailable
from ingest.aggregation._helper import HelperAggregator
from ingest.aggregation._helper_app import create_helper_app, load_helper_key
from ingest.aggregation._helper_client import HelperClient
from ingest.aggregation._helper_store import HelperBatch, HelperStore
from ingest.aggregation._leader import LeaderAggregator, RunStats
from ingest.aggregation._noise import (
    DiscreteLaplaceNoise,
    NoiseDraw,
    NoiseSource,
    add_noise,
    discrete_laplace_measurement,
)
from ingest.aggregation._service import AggregationService, aggregate_all
from ingest.aggregation._settings import DEVELOPMENT_VERIFY_KEY, HelperSettings, LeaderSettings
from ingest.aggregation._vdaf import parse_verify_key, task_vdaf, task_verify_key
from ingest.aggregation._wire import (
    AggregationJobRequest,
    AggregationJobResponse,
    CollectionRequest,
    CollectionResponse,
    HelperKeyInfo,
    ReportInit,
    ReportReason,
    ReportResult,
)

__all__ = [
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
]
