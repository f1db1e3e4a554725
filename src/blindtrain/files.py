"""Writing output files atomically: a temporary file in the target's folder, renamed into place.

A crash or an error mid-write never leaves half a checkpoint, metrics file or transcript.

* Temporary names are unique and carry the writer's process id (``.NAME.PID.RANDOM.part``); a
  ``.part`` file left by a killed writer (its process no longer exists) is removed the next time
  the same target is written, and an error removes this writer's own.
* The target is never *replaced* unless it is a regular file (or absent): a symbolic link, a FIFO,
  a socket or a block device is refused with a :class:`~blindtrain.errors.UsageError`; a character
  device (``/dev/null``, a terminal) is written through, in place.
* :func:`check_writable` answers "could this be written?" before any work is done, leaving nothing
  behind, so a run finds an unwritable output before its first step (exit 2), not after it.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from .errors import UsageError

PART_SUFFIX = ".part"


def _target_kind(path: Path) -> str:
    """``absent``, ``regular``, ``chardev``, or a reason the path must not be written."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return "absent"
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
    mode = info.st_mode
    if stat.S_ISLNK(mode):
        raise UsageError(f"{path} is a symbolic link; refusing to replace it (give the real path)")
    if stat.S_ISREG(mode):
        return "regular"
    if stat.S_ISCHR(mode):
        return "chardev"
    if stat.S_ISDIR(mode):
        raise UsageError(f"{path} is a directory; give a file path")
    kind = "FIFO" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode) else "special file"
    raise UsageError(f"{path} is a {kind}; refusing to write it")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_parts(path: str | os.PathLike) -> list[Path]:
    """Delete ``.part`` files of ``path`` whose writing process no longer exists; returns them."""
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    prefix = f".{path.name}."
    for candidate in path.parent.iterdir():
        name = candidate.name
        if not (name.startswith(prefix) and name.endswith(PART_SUFFIX)):
            continue
        pid_text = name[len(prefix):].split(".", 1)[0]
        if pid_text.isdigit() and not _process_alive(int(pid_text)):
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary handle whose contents replace ``path`` only when the block ends without error.

    A character device is written through (opened in place); a link or another special file is
    refused (see the module docstring)."""
    path = Path(path)
    if _target_kind(path) == "chardev":
        with open(path, "wb") as handle:
            yield handle
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_parts(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=PART_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
        if _target_kind(path) == "chardev":  # became a device meanwhile: never replace it
            raise UsageError(f"{path} became a device while it was written; not replaced")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_file(path) as handle:
        handle.write(data)
    return Path(path)


def check_writable(path: str | os.PathLike, *, flag: str) -> None:
    """Raise :class:`UsageError` naming ``flag`` unless :func:`atomic_file` could write ``path``.

    Nothing is left behind: a probe file is created in the target's folder and removed; a folder
    that does not exist yet is not created (its nearest existing ancestor must accept a new entry)."""
    path = Path(path)
    try:
        kind = _target_kind(path)
    except UsageError as exc:
        raise UsageError(f"{flag}: {exc}") from None
    if kind == "chardev":
        if not os.access(path, os.W_OK):
            raise UsageError(f"{flag}: device {path} is not writable")
        return
    folder = path.parent
    while not folder.exists():
        if folder.is_symlink():
            raise UsageError(f"{flag}: {folder} is a dangling symbolic link")
        folder = folder.parent
    if not folder.is_dir():
        raise UsageError(f"{flag}: cannot write {path}: {folder} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.{os.getpid()}.", suffix=PART_SUFFIX)
    except OSError as exc:
        raise UsageError(f"{flag}: cannot write {path}: {exc.strerror or exc}") from None
    os.close(fd)
    os.unlink(probe)
    if kind == "regular" and not os.access(path, os.W_OK) and not os.access(folder, os.W_OK):
        raise UsageError(f"{flag}: {path} is not writable")
