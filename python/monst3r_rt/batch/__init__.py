"""Many videos at once: ``monst3r-rt batch`` / :func:`run_many` (in-process, or on Ray)."""

from .fingerprint import config_fingerprint, options_fingerprint, stored_fingerprint
from .inputs import BatchInput, expand_inputs
from .report import REPORT_FILE, BatchReport, VideoResult
from .scheduler import run_many
from .worker import BatchError, Worker

__all__ = [
    "REPORT_FILE",
    "BatchError",
    "BatchInput",
    "BatchReport",
    "VideoResult",
    "Worker",
    "config_fingerprint",
    "expand_inputs",
    "options_fingerprint",
    "run_many",
    "stored_fingerprint",
]
