"""``monst3r-rt bench``: speed and memory of every stage, side by side with the official per-pair
forward, on this machine, as a table and a versioned JSON document.

Public API: :func:`run` (the rows, :class:`Record`), :func:`compare` (per-row ratios against an
earlier run), :data:`SCHEMA_VERSION` / :data:`SCHEMA` / :func:`validate` (the JSON document),
:func:`make_document`, :func:`load_json`, :func:`save_json`, :func:`format_table`,
:func:`machine_info`. The timing core (:mod:`.harness`) is shared with ``benchmarks/``.
"""

from .harness import measure
from .machine import describe, format_header, machine_info
from .records import (
    Comparison,
    Record,
    compare,
    format_comparison,
    format_scale,
    format_table,
    load_json,
    make_document,
    markdown_table,
    save_json,
)
from .runner import BACKENDS, PRECISIONS, STAGES, check_options, run
from .schema import SCHEMA, SCHEMA_VERSION, SchemaError, validate

__all__ = [
    "run", "check_options", "Record", "compare", "Comparison", "SCHEMA", "SCHEMA_VERSION",
    "SchemaError", "validate", "make_document", "load_json", "save_json", "format_table",
    "format_scale", "format_comparison", "markdown_table", "machine_info", "describe",
    "format_header", "measure", "BACKENDS", "PRECISIONS", "STAGES",
]  # fmt: skip
