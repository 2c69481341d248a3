"""Progress reporting with ETAs for long-running work.

Library functions take plain callbacks (``progress(done, total)``); this module turns them into
a rich progress bar on a terminal, or into sparse log lines with ETAs when output is captured
(CI logs, files), so long runs always show where they are and how long is left.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, Optional

Tick = Callable[[int, int], None]


def fmt_seconds(s: float) -> str:
    """``h:mm:ss`` (or ``m:ss`` under an hour) for progress lines and summaries."""
    s = max(0, int(round(s)))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


class LineProgress:
    """Log-line progress: at most one line every ``every`` seconds per task, with an ETA."""

    def __init__(self, stream=None, every: float = 5.0):
        self.stream = stream or sys.stderr
        self.every = every

    def task(self, description: str) -> Tick:
        start = time.perf_counter()
        last = [0.0]
        first: list = []  # (time, done) of the first tick: the rate is measured from there

        def tick(done: int, total: int) -> None:
            now = time.perf_counter()
            if not first:
                # A caller with work before its first item (a surrogate fit) or a resumed run
                # ticks (0 or what was done, total) when the items start: what came before
                # says nothing about the rate of what is left.
                first.extend((now, done))
            if done == 0 or (done < total and now - last[0] < self.every):
                return
            last[0] = now
            el = now - start
            t1, d1 = first
            if done >= total:
                eta = 0.0
            elif done > d1:
                eta = (now - t1) / (done - d1) * (total - done)
            else:  # a first tick with progress (an epoch done): the only rate is since the start
                eta = el / done * (total - done)
            eta_s = fmt_seconds(eta)
            pct = 100.0 * done / total if total else 100.0
            print(f"{description}: {done}/{total} ({pct:.0f}%) elapsed {fmt_seconds(el)} ETA {eta_s}",
                  file=self.stream, flush=True)

        return tick


class RichProgress:
    """A rich progress bar per task, with elapsed time and ETA."""

    def __init__(self, console=None):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self._progress = Progress(TextColumn("{task.description:>10}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                  console=console, transient=False)
        self._tasks: Dict[str, int] = {}

    def task(self, description: str) -> Tick:
        task_id = self._progress.add_task(description, total=None)

        def tick(done: int, total: int) -> None:
            self._progress.update(task_id, completed=done, total=total)

        return tick

    def __enter__(self):
        self._progress.start()
        return self

    def __exit__(self, *exc):
        self._progress.stop()


def epoch_tick(tick: Optional[Tick]) -> Optional[Callable[[int, int, dict], None]]:
    """``train_victim``'s ``progress(epoch, epochs, info)`` driving ``tick`` (None stays None)."""
    return None if tick is None else (lambda epoch, epochs, info: tick(epoch, epochs))


@contextmanager
def progress_ui(enabled: bool = True, stream=None) -> Iterator[Optional[Callable[[str], Tick]]]:
    """Yield a task factory (``factory("load")(done, total)``), or None when disabled."""
    if not enabled:
        yield None
        return
    stream = stream or sys.stderr
    if getattr(stream, "isatty", lambda: False)():
        from rich.console import Console

        with RichProgress(Console(file=stream)) as ui:
            yield ui.task
    else:
        yield LineProgress(stream).task
