"""Progress of long work: rich's bar on a terminal (with the rate and time left); elsewhere (a file, a CI log) a
logged line at every tenth of the work, at least every ~10 seconds, and at the end, with the rate and time left, so
that a long job is never silent. `--quiet` (the log level) turns both off."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

log = logging.getLogger("legokit")


class Advance(Protocol):
    """Reports steps done since the last call, and a status text."""

    def __call__(self, steps: int, status: str = "") -> None: ...


EVERY_SECONDS = 10.0  # off a terminal, the longest silence between two progress lines


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    return (
        f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else f"{seconds // 60}:{seconds % 60:02d}"
    )


def progress_line(label: str, done: int, total: int, elapsed: float, unit: str = "", status: str = "") -> str:
    """`label: done/total (status), R unit/s, ETA m:ss` — the rate and time left from the elapsed time."""
    rate = done / elapsed if elapsed > 0 else 0.0
    pace = (
        (f", {rate:.1f} {unit}/s" if rate >= 1 else f", {1 / rate:.1f} s per {unit.rstrip('s') or 'step'}")
        if rate
        else ""
    )
    left = f", ETA {_duration((total - done) / rate)}" if rate and done < total else f", {_duration(elapsed)} in all"
    return f"{label}: {done}/{total}{f' ({status})' if status else ''}{pace}{left}"


@contextmanager
def progress_bar(
    label: str, total: int, enabled: bool = True, unit: str = "steps", clock: Callable[[], float] = time.monotonic
) -> Iterator[Advance]:
    """A display of `total` steps (`unit` names them in rates); yields the function that reports steps done (and a
    status)."""
    console = Console(stderr=True)
    if not enabled or not log.isEnabledFor(logging.INFO) or total <= 0:
        yield lambda steps, status="": None
        return
    if console.is_terminal:
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=console, transient=True) as bar:
            job = bar.add_task(label, total=total, status="")
            yield lambda steps, status="": bar.update(job, advance=steps, status=status)
        return
    started = clock()
    done, shown, shown_at = 0, 0, started
    every = max(1, total // 10)

    def advance(steps: int, status: str = "") -> None:
        nonlocal done, shown, shown_at
        done += steps
        now = clock()
        if done - shown >= every or done >= total or now - shown_at >= EVERY_SECONDS:
            shown, shown_at = done, now
            log.info("%s", progress_line(label, done, total, now - started, unit, status))

    yield advance
