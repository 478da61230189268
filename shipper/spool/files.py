"""Spool files, opened safely: never through a symbolic link, written atomically, read with a size limit.

Every spool file is opened without following a symbolic link: the spool is group-writable, and a link
planted in it must not make the agent write, or the watcher ship or delete, a file elsewhere.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
from pathlib import Path
from typing import Any

from shipper.errors import DamagedObject, SpoolError

NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | NOFOLLOW
JSON_MAX = 1 << 20  # run.json, exit.json and dropped.json are a few hundred bytes; more is not ours
DAMAGE_HINT = ("the log is set aside, nothing of it is shipped as good bytes: inspect or move its spool "
               "directory, then restart `logship watch`")


class SpoolDamaged(SpoolError, DamagedObject):
    """A spool file that is not what the agent writes (or a symbolic link): its log is set aside."""

    code = "spool_damaged"


def write_json_atomic(path: Path, doc: Any, durable: bool = True, *, dir_fd: int | None = None) -> None:
    """Write, fsync, rename, fsync the directory: a file without its final name does not exist.

    `durable=False` skips the fsyncs, for state that is rewritten often and may be lost in a crash.
    With `dir_fd`, `path`'s name is taken in that directory (no path is followed again). A failed
    write (a full disk) leaves no temporary file behind.
    """
    write_atomic(path, json.dumps(doc, indent=1, sort_keys=True).encode(), durable, dir_fd=dir_fd)


def write_atomic(path: Path, data: bytes, durable: bool = True, *, dir_fd: int | None = None) -> None:
    own = dir_fd is None
    if dir_fd is None:
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    tmp = f".{path.name}.tmp-{os.urandom(4).hex()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW, 0o644, dir_fd=dir_fd)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise
        if durable:
            os.fsync(dir_fd)
    finally:
        if own:
            os.close(dir_fd)


def read_json(path: Path, *, dir_fd: int | None = None) -> Any:
    """A spool JSON file, or None if it does not exist. A symbolic link, a file too large to be ours or
    bytes that are not JSON raise SpoolDamaged naming the file."""
    data = read_file(path, JSON_MAX, dir_fd=dir_fd)
    if data is None:
        return None
    try:
        return json.loads(data)
    except ValueError as exc:  # also invalid UTF-8
        raise SpoolDamaged(f"{path} is not JSON ({exc})", DAMAGE_HINT) from None


def read_file(path: Path, limit: int, *, dir_fd: int | None = None) -> bytes | None:
    """The bytes of a regular spool file (at most `limit`), None if absent; never through a link."""
    try:
        fd = os.open(path.name if dir_fd is not None else path, os.O_RDONLY | NOFOLLOW, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SpoolDamaged(f"{path} is a symbolic link; refusing to follow it out of the spool",
                               DAMAGE_HINT) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SpoolDamaged(f"{path} is not a regular file", DAMAGE_HINT)
        if st.st_size > limit:
            raise SpoolDamaged(f"{path} holds {st.st_size} bytes, more than the {limit} such a file can",
                               DAMAGE_HINT)
        data = b""
        while len(data) <= limit and (piece := os.read(fd, limit + 1 - len(data))):
            data += piece
        if len(data) > limit:
            raise SpoolDamaged(f"{path} grew past {limit} bytes", DAMAGE_HINT)
        return data
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_child_dir(parent_fd: int, name: str, where: Path) -> int:
    """An fd of directory `name` in `parent_fd`; SpoolDamaged if it is a symbolic link or no directory."""
    try:
        return os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise SpoolDamaged(f"{where} is a symbolic link or not a directory; refusing to follow it "
                               "out of the spool", "remove it: the spool holds only directories the agent made"
                               ) from None
        raise


def open_log_dir(spool: Path, task: str, host: str) -> int:
    """An fd of the log directory `<spool>/<task>/<host>`, reached without following a link below the
    spool (the spool's own path is the operator's config and is taken as it is)."""
    root = os.open(spool, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        task_fd = open_child_dir(root, task, spool / task)
    finally:
        os.close(root)
    try:
        return open_child_dir(task_fd, host, spool / task / host)
    finally:
        os.close(task_fd)


def make_log_dir(spool: Path, task: str, host: str) -> int:
    """Create `<spool>/<task>/<host>` (FileExistsError if the log dir exists) and return its fd.

    Each level is created and opened relative to its parent's fd, so a symbolic link planted in the
    spool (`<spool>/<task>` pointing elsewhere) is refused rather than written through."""
    spool.mkdir(parents=True, exist_ok=True)
    root = os.open(spool, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(task, dir_fd=root)
        task_fd = open_child_dir(root, task, spool / task)
    finally:
        os.close(root)
    try:
        try:
            os.mkdir(host, dir_fd=task_fd)
        except FileExistsError:
            if stat.S_ISLNK(os.stat(host, dir_fd=task_fd, follow_symlinks=False).st_mode):
                open_child_dir(task_fd, host, spool / task / host)  # raises: a link is refused, not "exists"
            raise
        return open_child_dir(task_fd, host, spool / task / host)
    finally:
        os.close(task_fd)
