"""A user's command plugged in as a device (a latency per graph) or a trainer (an accuracy per net).

    template = CommandTemplate.parse("python3 bench.py {onnx} --arch {arch}", ("onnx", "arch"), "device coral")
    value = run_for_number(template.argv(onnx="/tmp/n.onnx", arch="|...|"), timeout_s=600, what="device coral",
                           item="net |...|", output_dir=work)     # the float on the command's last stdout line
    log = ResultLog(work / "timings.jsonl"); log.get(key); log.add(key, {...})

Both plugins share these three things and nothing else. A template is split into words like a shell line
(``shlex``) once, then each placeholder is filled in its word, so an arch string full of ``|`` and ``~`` reaches
the program as one argument and nothing is run through a shell (write ``sh -c '...'`` for pipes). A call that
fails, hangs past its timeout or prints no number on its last line is one ``UserError`` line; its whole output
is kept in ``output_dir``. Finished results go to an append-only JSON-lines log, one line per result written
and flushed at once: an interruption loses at most the call in flight, and a re-run asks the log first.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shlex
import signal
import string
import subprocess
import time
from pathlib import Path

from .errors import UserError
from .files import atomic_write_text, make_dir, os_error


class CommandTemplate:
    """A command line with ``{name}`` placeholders (``{{``/``}}`` for literal braces), checked when parsed."""

    def __init__(self, text: str, words: list[str], used: set[str]):
        self.text, self.words, self.used = text, words, used

    @classmethod
    def parse(cls, text: str, placeholders, what: str) -> "CommandTemplate":
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"{what}: the command is empty")
        try:
            words = shlex.split(text)
        except ValueError as e:
            raise UserError(f"{what}: cannot split the command {text!r} into words: {e}") from None
        used = set()
        for word in words:
            try:
                fields = [f for _, f, spec, conv in string.Formatter().parse(word) if f is not None]
            except ValueError as e:
                raise UserError(f"{what}: bad placeholder in {word!r}: {e} (write {{{{ and }}}} for literal "
                                "braces)") from None
            unknown = [f for f in fields if f not in placeholders]
            if unknown:
                raise UserError(f"{what}: unknown placeholder {{{unknown[0]}}} in the command; known: "
                                f"{', '.join('{' + p + '}' for p in placeholders)}")
            used.update(fields)
        return cls(text, words, used)

    def argv(self, **values) -> list[str]:
        return [word.format_map(values) for word in self.words]

    def __str__(self) -> str:
        return self.text


def _last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _kill(proc: subprocess.Popen) -> None:
    """The command and everything it started (its own session): a vendor tool's children do not outlive it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def run_for_number(argv: list[str], *, timeout_s: float | None, what: str, item: str,
                   output_dir: str | os.PathLike | None = None, timeout_hint: str = "") -> float:
    """Run ``argv``; the number on the last non-empty line of its stdout. A failure (non-zero exit, with its
    last stderr line), a timeout (``timeout_s``; None waits for ever) or a last line that is not a finite
    number raises one ``UserError`` line naming ``what`` and ``item`` (``timeout_hint`` after a timeout: the
    setting to raise); the call's output is then kept in ``output_dir`` (``last-failure.log``) and the message
    says so. Ctrl-C stops the command too."""
    started = time.monotonic()
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace",
                                stdin=subprocess.DEVNULL, start_new_session=True)
    except OSError as e:
        raise UserError(f"{what}: cannot run {argv[0]!r}: {e.strerror or e}") from None
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill(proc)
        why = f"timed out after {timeout_s:g} s{timeout_hint}"
        out, err = "", ""
    except BaseException:
        _kill(proc)
        raise
    else:
        why = None
        if proc.returncode != 0:
            tail = _last_line(err) or _last_line(out) or "no output"
            why = f"exited with status {proc.returncode}: {tail}"
        else:
            line = _last_line(out)
            try:
                value = float(line)
            except ValueError:
                why = f"printed {line[:80]!r} as its last line, not a number" if line else "printed nothing"
            else:
                if not math.isfinite(value):
                    why = f"printed {line!r}, not a finite number"
                else:
                    return value
    kept = _keep_output(output_dir, argv, out, err, why, time.monotonic() - started)
    raise UserError(f"{what}, {item}: the command {why}{f'; its output is in {kept}' if kept else ''}")


def _keep_output(folder, argv, out: str, err: str, why: str, seconds: float) -> Path | None:
    if folder is None:
        return None
    path = Path(folder) / "last-failure.log"
    try:
        atomic_write_text(path, f"$ {shlex.join(argv)}\n# {why}, after {seconds:.1f} s\n"
                                f"--- stdout\n{out}\n--- stderr\n{err}\n")
    except UserError:
        return None
    return path


def result_key(**identity) -> str:
    """A short stable hash of what a result depends on (the command text, the graph, the settings)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:24]


class ResultLog:
    """An append-only JSON-lines file of finished results, ``{"key": ..., **record}`` per line.

    A line cut short by a crash, or otherwise unreadable, is skipped (and ended, so the next line is whole): its
    result is simply made again. The last record of a key wins. Lines are appended whole (one ``write`` of a
    short line with ``O_APPEND``), so several processes may add to one log."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._records: dict[str, dict] | None = None

    def _load(self) -> dict[str, dict]:
        if self._records is None:
            self._records = {}
            try:
                text = self.path.read_text(encoding="utf-8", errors="replace")
            except FileNotFoundError:
                text = ""
            except OSError as e:
                raise os_error(e, "read", "results log", self.path) from None
            for line in text.splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and isinstance(record.get("key"), str):
                    self._records[record["key"]] = record
        return self._records

    def get(self, key: str) -> dict | None:
        return self._load().get(key)

    def records(self) -> list[dict]:
        return list(self._load().values())

    def add(self, key: str, record: dict) -> dict:
        record = {"key": key, **record}
        make_dir(self.path.parent, "results log folder")
        line = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":  # a line cut short by a crash: end it first
                    line = b"\n" + line
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            raise os_error(e, "write", "results log", self.path) from None
        self._load()[key] = record
        return record
