"""The one progress bar of camkit, used by every long loop of the library.

A bar is a ``tqdm`` bar on stderr (camkit never prints to stdout), and it appears only when
the work will take more than a few seconds: the time of the steps done so far gives the
estimate, so short calls stay silent. ``show=True`` always shows it, ``show=False`` never does;
the environment variable ``CAMKIT_PROGRESS`` (``0``/``1``) sets the default for ``show=None``.
"""

from __future__ import annotations

import os
import sys
import time
from types import TracebackType

from tqdm import tqdm

# Work estimated to take longer than this (in seconds) gets a bar.
MIN_SECONDS = 3.0


def _mode(show: bool | None) -> bool | None:
    """``True``/``False`` when the caller or ``CAMKIT_PROGRESS`` decides, ``None`` for auto."""
    if show is not None:
        if not isinstance(show, bool):
            raise TypeError(f"progress must be True, False or None (auto), got {show!r}")
        return show
    setting = os.environ.get("CAMKIT_PROGRESS", "").strip().lower()
    if setting in {"0", "false", "no", "off"}:
        return False
    if setting in {"1", "true", "yes", "on"}:
        return True
    return None


class Progress:
    """Counts ``total`` units of work; becomes a bar on stderr once the estimated total time
    exceeds ``min_seconds`` (or at once with ``show=True``; never with ``show=False``).

    Use as a context manager and call :meth:`update` after each step::

        with Progress(n, "scorecam") as progress:
            for batch in batches:
                ...
                progress.update(len(batch))
    """

    def __init__(self, total: int, desc: str, show: bool | None = None, *,
                 unit: str = "eval", min_seconds: float = MIN_SECONDS) -> None:
        self.total, self.desc, self.unit, self.min_seconds = total, desc, unit, min_seconds
        self.mode = _mode(show)
        self.done = 0
        self.bar: tqdm | None = None
        self.start = time.perf_counter()
        if self.mode is True:
            self._open()

    @property
    def shown(self) -> bool:
        """Whether the bar is on screen."""
        return self.bar is not None

    def _open(self) -> None:
        self.bar = tqdm(total=self.total, initial=self.done, desc=self.desc, unit=self.unit,
                        file=sys.stderr, leave=False, dynamic_ncols=True)

    def update(self, n: int) -> None:
        """Record ``n`` more units done."""
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.mode is None and 0 < self.done < self.total:
            elapsed = time.perf_counter() - self.start
            if elapsed / self.done * self.total > self.min_seconds:
                self._open()

    def note(self, values: dict[str, str]) -> None:
        """Show ``values`` (losses, a validation score, ...) beside the bar, when it is shown."""
        if self.bar is not None:
            self.bar.set_postfix(values)

    def close(self) -> None:
        """Remove the bar (if any)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()
