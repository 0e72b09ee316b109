"""Every read and write of a path the user names, in one place.

Writes are atomic (temp file + rename): a reader never sees half a file, an interrupted run never
corrupts one. An operating-system failure (read-only or system folder, a path under a file, disk full,
permission denied) becomes a ``UserError``: one line saying what failed, on which path, and what to do.
Writable outputs can be checked before any long work starts (``check_writable``), and nothing is ever written
inside the installed package (``refuse_shipped``): its shipped data is read-only to the tool. Text files the user
gives are UTF-8 with or without a byte-order mark, with any line endings.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import os
import shutil
import socket
import stat
import sys
import tempfile
import time
from contextlib import contextmanager
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

from . import __version__
from .errors import UserError
from .fields import record, text

BOM = b"\xef\xbb\xbf"
CACHE_DIR = Path.home() / ".cache" / "pomonag-edge"  # what is kept between runs, each kind in a folder of its own

_REASONS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "the file system is read-only",
    errno.ENOSPC: "no space left on the disk",
    errno.EDQUOT: "disk quota exceeded",
    errno.ENAMETOOLONG: "the name is too long",
    errno.EISDIR: "it is a folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.ELOOP: "too many symbolic links",
    errno.EEXIST: "it already exists",
    errno.ENOENT: "no such file or folder",
}


def _reason(e: OSError, writing: bool) -> str:
    if writing and e.errno == errno.ENOENT:  # e.g. /proc: the folder exists but takes no new files
        return "the system does not allow files there"
    return _REASONS.get(e.errno, e.strerror or type(e).__name__)


def os_error(e: OSError, action: str, what: str, path, hint: str | None = None) -> UserError:
    """``e`` on ``path`` as one line: what failed, on which path, why, and what to do."""
    writing = action in ("write", "create", "replace")
    if hint is None:
        hint = ("free some space or choose another place" if e.errno in (errno.ENOSPC, errno.EDQUOT)
                else "choose a folder you can write to" if writing else "check the path and its permissions")
    return UserError(f"cannot {action} {what} {path}: {_reason(e, writing)}; {hint}")


# ------------------------------------------------------------------ reading


def decode_user_text(data: bytes, what: str, path) -> str:
    """UTF-8 with or without a byte-order mark; CRLF and CR line endings become LF."""
    skip = len(BOM) if data.startswith(BOM) else 0
    try:
        text = data[skip:].decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{what} {path} is not UTF-8 text (byte 0x{data[skip + e.start]:02x} at offset "
                        f"{skip + e.start}): save it as UTF-8") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_user_bytes(path: str | os.PathLike, what: str, error: type = UserError) -> bytes:
    """A file the user named, or one line saying why it cannot be read (``error``, a ``UserError``)."""
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise error(f"{what} {path} is a folder, not a file") from None
    except OSError as e:
        raise error(str(os_error(e, "read", what, path))) from None


def read_user_text(path: str | os.PathLike, what: str, error: type = UserError, encoding: str = "utf-8") -> str:
    """Text of a file the user named (``-``: standard input); see ``decode_user_text``."""
    if str(path) == "-":
        return decode_user_text(sys.stdin.buffer.read(), what, "<stdin>")
    data = read_user_bytes(path, what, error)
    try:
        return decode_user_text(data, what, path)
    except UserError as e:
        raise error(str(e)) from None


def read_user_json(path: str | os.PathLike, what: str, error: type = UserError):
    """A JSON file the user named (or a tool wrote); corrupt JSON is one line naming the file and the line."""
    text = read_user_text(path, what, error)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{what} {path} is corrupt (not JSON: {e.msg} at line {e.lineno})") from None


def check_versioned(d, source: str, *, schema: str, schema_version: int, kind: str, error: type,
                    hint: str = "") -> int:
    """The schema version of a JSON document ``d`` tagged ``{"schema": schema, "schema_version": N}``; a foreign
    document, an invalid version or one newer than ``schema_version`` is one ``error`` line naming ``source``
    (``hint`` follows the foreign-document line)."""
    if not isinstance(d, dict) or d.get("schema") != schema:
        raise error(f"{source} is not a pomonag-edge {kind} (no '{schema}' schema tag){hint}")
    version = d.get("schema_version")
    if not isinstance(version, int) or version < 1:
        raise error(f"{source} has an invalid schema_version {version!r}")
    if version > schema_version:
        raise error(f"{source} uses {kind} schema {version}, newer than this pomonag-edge ({__version__}, schema "
                    f"{schema_version}): upgrade pomonag-edge")
    return version


def from_versioned_json(cls, d, source: str, *, schema: str, schema_version: int, kind: str, error: type,
                        hint: str = ""):
    """``cls(**fields)`` of a JSON document ``d`` tagged as ``check_versioned`` checks: a foreign or newer
    document, a missing ``name`` or a field of the wrong shape is one ``error`` line naming ``source``. Fields
    this version does not know are dropped, so an older pomonag-edge can still read what a newer one adds within
    the same schema version."""
    check_versioned(d, source, schema=schema, schema_version=schema_version, kind=kind, error=error, hint=hint)
    fields = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
    if "name" not in fields:
        raise error(f"{source} is missing the 'name' field")
    try:
        return cls(**fields)
    except TypeError as e:
        raise error(f"{source} is malformed: {e}") from None


# ------------------------------------------------------------------ names and writable places


def check_name(name: str, what: str = "--name") -> str:
    """A name that becomes a file name: no folders, no '..', no leading dot, nothing unprintable."""
    bad = (not name or "/" in name or "\\" in name or name.startswith(".") or "\0" in name
           or not name.isprintable() or len(name.encode()) > 200)
    if bad:
        raise UserError(f"{what} {name!r} must be a plain name (letters, digits, '-', '_', '.'; no '/', no leading "
                        "dot); use --out PATH to choose where the file goes")
    return name


def _refuse_special(path: Path, what: str) -> None:
    """A device, pipe or socket at ``path`` would be replaced by a plain file: never do that."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError:
        return  # a later step says why
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise UserError(f"cannot write {what} {path}: it is a device, pipe or socket, not a file; name a file")


@lru_cache(maxsize=1)
def _package_dir() -> str:
    """The installed package's folder, links resolved: its shipped data is read-only to the tool."""
    return os.path.realpath(str(files("pomonag_edge")))


def refuse_shipped(path: str | os.PathLike, what: str) -> None:
    """A write into the installed package (shipped checkpoints, tables, descriptors) is refused with one line:
    every later command reads that data, and a stray overwrite would change their answers silently. The real
    path is compared, so a link or a relative path into the package does not slip through."""
    real = os.path.realpath(os.path.abspath(path))
    package = _package_dir()
    if real == package or real.startswith(package + os.sep):
        raise UserError(f"cannot write {what} {path}: it is inside the installed pomonag-edge package ({package}), "
                        "whose shipped data is read-only to the tool; choose a path outside it")


def _nearest_existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def check_writable(path: str | os.PathLike, what: str, folder: bool = False) -> Path:
    """Fail now, with one line, if ``path`` (a file, or a folder with ``folder``) could not be written later.

    Creates nothing that stays: a probe file is made and removed in the nearest existing folder."""
    path = Path(path)
    refuse_shipped(path, what)
    try:
        if folder and path.exists() and not path.is_dir():
            raise UserError(f"cannot write {what} {path}: it is a file, not a folder; choose another path")
        if not folder and path.is_dir():
            raise UserError(f"cannot write {what} {path}: it is a folder; name a file")
        _refuse_special(path, what)
        anchor = _nearest_existing(path if folder else path.parent)
    except OSError as e:  # a name too long, a loop of links
        raise os_error(e, "write", what, path) from None
    if not anchor.is_dir():
        raise UserError(f"cannot write {what} {path}: {anchor} is a file, not a folder; choose another path")
    try:
        fd, probe = tempfile.mkstemp(prefix=".pomonag-write-check.", dir=anchor)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise os_error(e, "write", what, path) from None
    return path


def make_dir(path: str | os.PathLike, what: str = "folder", exist_ok: bool = True) -> Path:
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=exist_ok)
    except FileExistsError:
        if exist_ok:  # a file where the folder should be
            raise UserError(f"cannot create {what} {path}: a file of that name exists; choose another path") from None
        raise
    except OSError as e:
        raise os_error(e, "create", what, path) from None
    return path


# ------------------------------------------------------------------ atomic writes


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes, what: str = "file") -> Path:
    """Write to a temp file beside ``path``, then rename; the file gets the usual umask permissions
    (mkstemp alone would leave it readable by its owner only)."""
    path = Path(path)
    refuse_shipped(path, what)
    _refuse_special(path, what)
    make_dir(path.parent, f"folder of {what}")
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as e:
        _discard(tmp)
        raise os_error(e, "write", what, path) from None
    except BaseException:
        _discard(tmp)
        raise
    return path


def _discard(tmp: str | None) -> None:
    if tmp is not None and os.path.exists(tmp):
        os.unlink(tmp)


def atomic_write_text(path: str | os.PathLike, text: str, what: str = "file") -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), what)


def atomic_write_json(path: str | os.PathLike, obj, what: str = "file") -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n", what)


def json_sha256(obj) -> str:
    """16 hex digits of the SHA-256 of ``obj`` as canonical JSON (sorted keys): the content hash runs and exports
    record to name the exact profile they used, unchanged by key order or indentation on disk."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def save_revision_json(parent_path: str | os.PathLike, obj, what: str, error=None) -> Path:
    """Write ``obj`` as a new file beside ``parent_path``: ``NAME.r2.json``, ``.r3``, ... (the first free name).

    The parent is never rewritten (runs name it by hash), and two writers extending it at once each get their
    own revision: neither update is lost."""
    parent_path = Path(parent_path)
    base = parent_path.name.removesuffix(".json")
    base = base.rsplit(".r", 1)[0] if base.rsplit(".r", 1)[-1].isdigit() else base
    for n in range(2, 10_000):
        path = parent_path.with_name(f"{base}.r{n}.json")
        if create_new_json(path, obj, what):
            return path
    raise (error or UserError)(f"too many revisions of {parent_path}")


def revision_parent_spec():
    """The ``parent`` a revision records (``{"path", "name", "sha256"}`` of the profile it extends, or null), as a
    ``fields`` check for the profiles that keep revisions."""
    return record({"path": text(), "name": text(), "sha256": text()}, optional=True)


def create_new_json(path: str | os.PathLike, obj, what: str = "file") -> bool:
    """Write ``path`` only if no file of that name exists (atomic: two writers never both succeed).
    Returns False when it existed."""
    path = Path(path)
    refuse_shipped(path, what)
    make_dir(path.parent, f"folder of {what}")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write((json.dumps(obj, indent=2) + "\n").encode())
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        try:
            os.link(tmp, path)  # fails if path exists, unlike rename
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            with open(path, "xb") as f:  # a file system without hard links: exclusive create, then write
                f.write(Path(tmp).read_bytes())
        return True
    except FileExistsError:
        return False
    except OSError as e:
        raise os_error(e, "write", what, path) from None
    finally:
        _discard(tmp)


# ------------------------------------------------------------------ whole folders


def staging_dir(final: str | os.PathLike, what: str = "folder") -> Path:
    """A fresh hidden folder beside ``final`` to build its next contents in (see ``replace_dir``)."""
    final = Path(final)
    refuse_shipped(final, what)
    make_dir(final.parent, f"folder of {what}")
    try:
        staged = Path(tempfile.mkdtemp(prefix=f".{final.name}.new-", dir=final.parent))
        os.chmod(staged, 0o777 & ~_umask())  # mkdtemp's 0700 would outlive the rename
    except OSError as e:
        raise os_error(e, "create", what, final) from None
    return staged


def replace_dir(staged: str | os.PathLike, final: str | os.PathLike, what: str = "folder") -> Path:
    """Put the finished folder ``staged`` at ``final``, replacing what was there as a whole.

    Two renames: the old folder moves aside, the new one moves in, then the old one is deleted. An
    interruption between them leaves the old folder whole beside the new one, never a mix of the two."""
    staged, final = Path(staged), Path(final)
    old = None
    try:
        if os.path.lexists(final):
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
            os.replace(final, old / final.name)
        os.replace(staged, final)
    except OSError as e:
        raise os_error(e, "replace", what, final) from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


# ------------------------------------------------------------------ one writer at a time


CLAIM_SUFFIX = ".claim"


def _claim_file(target: Path) -> Path:
    target = Path(os.path.abspath(target))
    return target.parent / f".{target.name}{CLAIM_SUFFIX}"


def _holder(text: str) -> str:
    try:
        info = json.loads(text)
        return f"pid {info['pid']} on {info['host']}, since {info['started']}"
    except (ValueError, KeyError, TypeError):
        return "another process"


@contextmanager
def claim(target: str | os.PathLike, what: str = "folder", folder: bool = True):
    """Hold ``target`` (a folder about to be written, or a file with ``folder`` false) while the block runs: a second
    writer, here or in another process, is refused with one line naming the holder. Yields what a stale claim
    said (its holder was killed) or None.

    The claim is a hidden file ``.NAME.claim`` beside ``target`` recording pid, host and start time, held with
    an exclusive ``flock``. The kernel drops the lock when its process dies, however it dies, so a claim file
    nobody holds is stale by construction (no pid guessing across machines) and is taken over. While the claim is
    held, leftovers of a killed writer of ``target`` (``staging_dir`` folders) are removed (``clean_staging``)."""
    import fcntl

    target = check_writable(target, what, folder=folder)  # its own one-line reasons come first
    lock = _claim_file(target)
    make_dir(lock.parent, f"folder of {what}")
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        except OSError as e:
            raise os_error(e, "write", what, target) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
            os.close(fd)
            raise UserError(f"{what} {target} is being written by another pomonag-edge ({holder}): wait for it to "
                            "finish, or choose another path") from None
        try:  # its holder may have released and removed it between our open and our lock: lock the new one
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        stale = os.pread(fd, 4096, 0).decode("utf-8", "replace") or None
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                             time.gmtime())}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        clean_staging(target)
        yield None if stale is None else _holder(stale)
    finally:
        try:
            os.unlink(lock)  # still holding it: a waiting writer re-checks the inode and locks a fresh file
        except OSError:
            pass
        os.close(fd)


def clean_staging(final: str | os.PathLike) -> list[Path]:
    """Remove what a killed writer of ``final`` left beside it: ``staging_dir`` folders (``.NAME.new-*``) and the
    previous contents ``replace_dir`` moved aside (``.NAME.old-*``); when ``final`` itself is missing because
    the writer died between ``replace_dir``'s two renames, the previous contents are put back instead. Only
    call it while holding ``claim(final)``: a live writer's folders look the same. Returns what was removed."""
    final = Path(os.path.abspath(final))
    removed = []
    for old in sorted(final.parent.glob(f".{glob.escape(final.name)}.old-*")):
        inner = old / final.name
        if not os.path.lexists(final) and inner.exists():
            os.replace(inner, final)
        shutil.rmtree(old, ignore_errors=True)
        removed.append(old)
    for staged in sorted(final.parent.glob(f".{glob.escape(final.name)}.new-*")):
        shutil.rmtree(staged, ignore_errors=True)
        removed.append(staged)
    return removed
