"""The one shape of a progress report: ``progress(stage, done, total, loss=None, detail=None)``.

Long work (profiling, timing a batch, training, sampling) calls it as it goes; ``commands._progress.stage_progress``
shows it: one bar per ``stage`` on a terminal, lines off one. ``done`` of ``total`` steps (nets, rounds, epochs);
``loss`` the last training loss; ``detail`` what the stage is at (the item just timed, "2 running, 15 queued").
A caller that wants fewer fields takes them as keywords it ignores.
"""

from __future__ import annotations

from typing import Protocol


class ProgressFn(Protocol):
    def __call__(self, stage: str, done: int, total: int, loss: float | None = None,
                 detail: str | None = None) -> None: ...
