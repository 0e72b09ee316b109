"""A rich progress display fed by the library's ``progress(stage, done, total)`` callbacks."""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def stage_progress():
    """Yields ``progress(stage, done, total)``: one bar per stage, on stderr, gone when done. The display starts
    at the first report, so an error before any work (bad data) prints its one line and nothing else."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                   TimeElapsedColumn(), console=Console(stderr=True), transient=True)
    tasks: dict = {}

    def progress(stage, done, total):
        if not tasks:
            bar.start()
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total)
        bar.update(tasks[stage], completed=done, total=total)

    try:
        yield progress
    finally:
        if tasks:
            bar.stop()
