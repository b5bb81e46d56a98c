"""The machine a benchmark ran on, for its table header (shared with ``monst3r-rt bench``)."""

from __future__ import annotations

from monst3r_rt.bench.machine import describe, machine_info

__all__ = ["describe", "machine_info"]
