"""The checked-in JSON Schema files, generated from the pydantic models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from schemas._deletion import (
    DeletionReceipt,
    DeletionRequestV1,
    IngestedDeletionRequest,
    SignedDeletionRequest,
)
from schemas._envelope import EnvelopeV1, IngestedEnvelope
from schemas._wire import BatchResult, EnvelopeBatch, SignedEnvelope

__all__ = ["JSONSCHEMA_DIR", "json_schemas", "write_json_schemas"]

JSONSCHEMA_DIR = Path(__file__).parent / "jsonschema"

_MODELS: dict[str, type[BaseModel]] = {
    "envelope-v1.json": EnvelopeV1,
    "ingested-envelope-v1.json": IngestedEnvelope,
    "signed-envelope-v1.json": SignedEnvelope,
    "envelope-batch-v1.json": EnvelopeBatch,
    "batch-result-v1.json": BatchResult,
    "deletion-request-v1.json": DeletionRequestV1,
    "signed-deletion-request-v1.json": SignedDeletionRequest,
    "ingested-deletion-request-v1.json": IngestedDeletionRequest,
    "deletion-receipt-v1.json": DeletionReceipt,
}


def json_schemas() -> dict[str, str]:
    """File name -> JSON Schema text, as it should be on disk."""
    out: dict[str, str] = {}
    for name, model in _MODELS.items():
        schema: dict[str, Any] = model.model_json_schema(mode="validation")
        schema["$id"] = f"https://quietwire.dev/schemas/{name}"
        out[name] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def write_json_schemas(directory: Path = JSONSCHEMA_DIR) -> list[Path]:
    """Regenerate the checked-in schema files; returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in json_schemas().items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    for p in write_json_schemas():
        print(p)
