"""The JSON written by ``monst3r-rt bench --json`` (schema ``monst3r-rt-bench``, version 1).

A document::

    {"schema": "monst3r-rt-bench", "version": 1, "created": "2025-01-01T12:00:00+00:00",
     "elapsed_s": 123.4, "interrupted": false,
     "machine": {...machine_info()...}, "settings": {...the run's options...},
     "records": [Record, ...]}

A record (one row of the table; times in milliseconds, memory in MiB)::

    stage        "encoder" | "decoder" | "pair" | "stream" | "align" | "pipeline"
    variant      "" or the solver ("adam" | "lm") of an align row
    backend      "torch" | "onnxruntime" | "tensorrt" | "official" (the baseline rows) |
                 "none" (align rows: no network)
    runtime      what ran, e.g. "torch-cpu-fp32", "onnxruntime-cpu-fp32", or ""
    precision    "fp32" | "fp16" | "bf16"
    batch        frames (encoder) or pairs (decoder, pair) per call; 1 otherwise
    device       "cpu" | "cuda"
    size         [H, W] in pixels
    frames       frames of a stream / align / pipeline row, else null
    weights      "random" or the checkpoint given
    baseline     true on the official per-pair rows
    status       "ok" | "skipped" (cannot run here: see reason) | "failed" (raised: see reason)
    reason       why it was skipped or failed, else ""
    samples      measured calls (after warm-up)
    p50_ms p95_ms p99_ms mean_ms   latency of one call, null unless ok
    throughput   items per second (unit), null unless ok
    unit         "frames/s" | "pairs/s" | "iterations/s"
    speedup      throughput / the baseline row's (same stage, device, size), or null
    peak_rss_mb                 peak host resident memory during the row
    peak_gpu_allocated_mb peak_gpu_reserved_mb   torch's peaks on a GPU, else null
    breakdown    {stage name: ms} per-stage latency p50 (stream: per frame; pipeline: per run;
                 align: init / optimize) — may be empty
    extra        free-form details (iterations, timer, p95 per stage, ...)

Readers must reject a document whose ``schema`` differs or whose ``version`` is newer than they
know; fields are only ever added within a major version.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SCHEMA_NAME", "SCHEMA_VERSION", "SCHEMA", "RECORD_SCHEMA", "validate",
           "SchemaError"]  # fmt: skip

SCHEMA_NAME = "monst3r-rt-bench"
SCHEMA_VERSION = 1

STAGES = ("encoder", "decoder", "pair", "stream", "align", "pipeline")
BACKENDS = ("torch", "onnxruntime", "tensorrt", "official", "none")
_num_or_null = {"type": ["number", "null"]}

#: JSON Schema (draft 2020-12 subset) of one record.
RECORD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": [
        "stage", "variant", "backend", "runtime", "precision", "batch", "device", "size",
        "frames", "weights", "baseline", "status", "reason", "samples", "p50_ms", "p95_ms",
        "p99_ms", "mean_ms", "throughput", "unit", "speedup", "peak_rss_mb",
        "peak_gpu_allocated_mb", "peak_gpu_reserved_mb", "breakdown", "extra",
    ],
    "properties": {
        "stage": {"type": "string", "enum": list(STAGES)},
        "variant": {"type": "string"},
        "backend": {"type": "string", "enum": list(BACKENDS)},
        "runtime": {"type": "string"},
        "precision": {"type": "string", "enum": ["fp32", "fp16", "bf16"]},
        "batch": {"type": "integer", "minimum": 1},
        "device": {"type": "string"},
        "size": {"type": "array", "items": {"type": "integer", "minimum": 1},
                 "minItems": 2, "maxItems": 2},
        "frames": {"type": ["integer", "null"]},
        "weights": {"type": "string"},
        "baseline": {"type": "boolean"},
        "status": {"type": "string", "enum": ["ok", "skipped", "failed"]},
        "reason": {"type": "string"},
        "samples": {"type": "integer", "minimum": 0},
        "p50_ms": _num_or_null, "p95_ms": _num_or_null, "p99_ms": _num_or_null,
        "mean_ms": _num_or_null, "throughput": _num_or_null,
        "unit": {"type": "string", "enum": ["frames/s", "pairs/s", "iterations/s"]},
        "speedup": _num_or_null,
        "peak_rss_mb": _num_or_null,
        "peak_gpu_allocated_mb": _num_or_null, "peak_gpu_reserved_mb": _num_or_null,
        "breakdown": {"type": "object", "additionalProperties": {"type": "number"}},
        "extra": {"type": "object"},
    },
    "additionalProperties": False,
}  # fmt: skip

#: JSON Schema of a whole ``--json`` document.
SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "monst3r-rt bench results",
    "type": "object",
    "required": ["schema", "version", "created", "elapsed_s", "interrupted", "machine",
                 "settings", "records"],
    "properties": {
        "schema": {"type": "string", "enum": [SCHEMA_NAME]},
        "version": {"type": "integer", "enum": [SCHEMA_VERSION]},
        "created": {"type": "string"},
        "elapsed_s": {"type": "number"},
        "interrupted": {"type": "boolean"},
        "machine": {"type": "object"},
        "settings": {"type": "object"},
        "records": {"type": "array", "items": RECORD_SCHEMA},
    },
}  # fmt: skip


class SchemaError(ValueError):
    """A document does not follow :data:`SCHEMA`; the message names the path."""


_TYPES: dict[str, Any] = {
    "object": dict, "array": list, "string": str, "boolean": bool, "null": type(None),
    "integer": int, "number": (int, float),
}  # fmt: skip


def _is(value: Any, name: str) -> bool:
    if name in ("integer", "number") and isinstance(value, bool):
        return False
    return isinstance(value, _TYPES[name])


def _check(value: Any, schema: dict[str, Any], path: str) -> None:
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else types
        if not any(_is(value, t) for t in names):
            raise SchemaError(f"{path}: expected {' or '.join(names)}, got {type(value).__name__}")
    if "enum" in schema and value not in schema["enum"]:
        raise SchemaError(f"{path}: {value!r} is not one of {schema['enum']}")
    if "minimum" in schema and _is(value, "number") and value < schema["minimum"]:
        raise SchemaError(f"{path}: {value} < minimum {schema['minimum']}")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                raise SchemaError(f"{path}: missing required field {key!r}")
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, v in value.items():
            if key in props:
                _check(v, props[key], f"{path}.{key}")
            elif extra is False:
                raise SchemaError(f"{path}: unexpected field {key!r}")
            elif isinstance(extra, dict):
                _check(v, extra, f"{path}.{key}")
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            raise SchemaError(f"{path}: fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            raise SchemaError(f"{path}: more than {schema['maxItems']} items")
        if "items" in schema:
            for i, v in enumerate(value):
                _check(v, schema["items"], f"{path}[{i}]")


def validate(doc: Any) -> None:
    """Raise :class:`SchemaError` (naming the offending path) unless ``doc`` follows
    :data:`SCHEMA` (the subset of JSON Schema it uses: type, enum, required, properties,
    additionalProperties, items, minItems, maxItems, minimum)."""
    if isinstance(doc, dict) and doc.get("schema") == SCHEMA_NAME:
        v = doc.get("version")
        if isinstance(v, int) and v > SCHEMA_VERSION:
            raise SchemaError(f"$.version: {v} is newer than this reader ({SCHEMA_VERSION})")
    _check(doc, SCHEMA, "$")
