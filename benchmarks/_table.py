"""A side-by-side table for the benchmarks' output (Markdown, so it can go into the README);
the same format as ``monst3r-rt bench`` (:func:`monst3r_rt.bench.markdown_table`)."""

from __future__ import annotations

from monst3r_rt.bench.records import markdown_table


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    """Print ``title`` then a Markdown table with padded columns."""
    print(f"\n{title}")
    print(markdown_table(header, rows))
