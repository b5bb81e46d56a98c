"""A progress bar that needs no dependency: tqdm when installed, else silent."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], total: int, desc: str, enabled: bool = True) -> Iterator[T]:
    """Iterate ``items`` with a progress bar on stderr when ``enabled`` and tqdm is installed."""
    if enabled:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            pass
        else:
            yield from tqdm(items, total=total, desc=desc, leave=False)
            return
    yield from items


class ProgressBar:
    """A manually stepped bar (tqdm when installed and ``enabled``, else nothing)."""

    def __init__(self, total: int, desc: str, enabled: bool = True):
        self._bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                return
            self._bar = tqdm(total=total, desc=desc, leave=False)

    def step(self, *_: object) -> None:
        """Advance by one (any arguments, e.g. an optimiser's ``(iteration, energy)``)."""
        if self._bar is not None:
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
