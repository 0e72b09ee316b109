"""Progress of long work, fed by the library's ``progress(stage, done, total, loss=None, detail=None)`` callbacks
(``pomonag_edge.progress.ProgressFn``); ``detail`` (a fan-out's "2 running, 15 queued") follows the stage's name.

On a terminal: one rich bar per stage on stderr with elapsed time, ETA and the last loss, gone when done unless
asked to stay. Off a terminal (piped, logged, CI) a bar would print nothing useful, so each report becomes a line
on stderr instead (``probe 3/20: epoch 4/10, loss 1.2345, 12 s, eta 18 s``): every report of a stage of at most
``EVERY_REPORT`` steps (epochs, nets), else the last one and one every ``LINE_EVERY_S`` seconds (optimizer steps).
"""

from __future__ import annotations

import time
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

EVERY_REPORT = 200  # stages this short (epochs, nets, probes) log every step when piped
LINE_EVERY_S = 10.0  # longer stages (optimizer steps) log at most this often, and their last step


def _seconds(s: float) -> str:
    s = int(round(s))
    if s < 120:
        return f"{s} s"
    return f"{s // 60} min {s % 60:02d} s" if s < 7200 else f"{s // 3600} h {s // 60 % 60:02d} min"


class _Lines:
    """The off-terminal form: one line per report (see the module docstring)."""

    def __init__(self, console):
        self.console, self.started, self.last_line = console, {}, {}

    def __call__(self, stage, done, total, loss=None, detail=None):
        now = time.monotonic()
        start = self.started.setdefault(stage, (now, done))
        if total and total > EVERY_REPORT and done < total and now - self.last_line.get(stage, -1e9) < LINE_EVERY_S:
            return
        self.last_line[stage] = now
        elapsed = now - start[0]
        rate = (done - start[1]) / elapsed if elapsed > 0 else 0.0
        parts = [f"{done}/{total}" if total else str(done)]
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        parts.append(_seconds(elapsed))
        if total and 0 < done < total and rate > 0:
            parts.append(f"eta {_seconds((total - done) / rate)}")
        if detail is not None:
            parts.append(detail)
        self.console.print(f"{stage}: {', '.join(parts)}", highlight=False, soft_wrap=True)


@contextmanager
def stage_progress(console=None, transient: bool = True, lines: bool = True):
    """Yields ``progress(stage, done, total, loss=None, detail=None)``, shown on ``console`` (default: a new one on
    stderr; pass the command's own to print through it meanwhile). The display starts at the first report, so an
    error before any work (bad data) prints its one line and nothing else. ``transient=False`` leaves the finished
    bars on the screen; ``lines=False`` prints nothing off a terminal."""
    console = console or Console(stderr=True)
    if not console.is_terminal:
        yield _Lines(console) if lines else (lambda stage, done, total, loss=None, detail=None: None)
        return
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[loss]}"), console=console,
                   transient=transient)
    tasks: dict = {}

    def progress(stage, done, total, loss=None, detail=None):
        if not tasks:
            bar.start()
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total, loss="")
        described = {} if detail is None else {"description": f"{stage} ({detail})"}
        bar.update(tasks[stage], completed=done, total=total, loss="" if loss is None else f"loss {loss:.4f}",
                   **described)

    try:
        yield progress
    finally:
        if tasks:
            bar.stop()
