"""Progress of long work: rich's bar on a terminal; elsewhere (a file, a CI log) a logged line at every tenth of
the work and at the end, so that a long job is never silent. `--quiet` (the log level) turns both off."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

log = logging.getLogger("legokit")

Advance = Callable[[int, str], None]  # (steps done since the last call, a status text)


@contextmanager
def progress_bar(label: str, total: int, enabled: bool = True) -> Iterator[Advance]:
    """A display of `total` steps; yields the function that reports steps done (and a status)."""
    console = Console(stderr=True)
    if not enabled or not log.isEnabledFor(logging.INFO) or total <= 0:
        yield lambda steps, status="": None
        return
    if console.is_terminal:
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[status]}"), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=True) as bar:
            job = bar.add_task(label, total=total, status="")
            yield lambda steps, status="": bar.update(job, advance=steps, status=status)
        return
    done, shown = 0, 0
    every = max(1, total // 10)

    def advance(steps: int, status: str = "") -> None:
        nonlocal done, shown
        done += steps
        if done - shown >= every or done >= total:
            shown = done
            log.info("%s: %d/%d%s", label, done, total, f" ({status})" if status else "")

    yield advance
