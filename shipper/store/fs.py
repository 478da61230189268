"""The filesystem store (`file:///abs/path` or `file://relative/path`): one file per object.

A file without its final name does not exist: writes go to `KEY.tmp-<random>`, are fsynced and renamed.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import errno
import os
import secrets
import stat
import time
from collections.abc import AsyncGenerator, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, NoReturn

from ..errors import ObjectNotFound, StoreError, StoreUnavailable
from .base import ObjectInfo, StoreStats
from .keys import check_dir_prefix, check_key

if TYPE_CHECKING:
    from ..config import StoreConfig

TMP_MARK = ".tmp-"
STALE_TMP_SECONDS = 60.0
_COPY_CHUNK = 8 << 20
LIST_PAGE = 1000  # keys per S3 ListObjectsV2 page and per DeleteObjects call: how requests are counted
# errno values that mean "the disk or the mount is in trouble", worth retrying later.
_TRANSIENT = {errno.EIO, errno.ENOSPC, errno.EDQUOT, errno.EAGAIN, errno.EBUSY, errno.ETIMEDOUT, errno.ESTALE}
_Filler = Callable[[int], None]  # writes an object's bytes to an open file descriptor


class FileStore:
    """Objects are files under a root directory; all disk I/O runs in worker threads."""

    def __init__(self, cfg: StoreConfig) -> None:
        self.url = cfg.url
        # Counted as S3 would bill the same calls, so that a bench on a file store shows the requests too.
        self.stats = StoreStats()
        raw = cfg.url.removeprefix("file://")
        if not raw:
            raise StoreError(f"store.url = {cfg.url!r} names no directory",
                             "use file:///ABSOLUTE/PATH or file://RELATIVE/PATH")
        # Resolved once, so a later chdir does not move the store.
        self.root = Path(raw).absolute()
        try:
            # Construction is sync by contract; one mkdir is cheap enough to do here.
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            _raise(exc, f"cannot create the store directory {self.root}")

    def __repr__(self) -> str:
        return f"FileStore({self.url!r})"

    def _path(self, key: str) -> Path:
        check_key(key)
        if TMP_MARK in key.rsplit("/", 1)[-1]:
            raise StoreError(f"object key {key!r} is not allowed",
                             f"names containing {TMP_MARK!r} are the store's temporary files")
        return self.root / key

    # --- writing -----------------------------------------------------------------------

    async def put(self, key: str, data: bytes | memoryview, *, checked: bool = False,
                  sha256: bytes | None = None) -> None:
        path = self._path(key)  # `checked`, `sha256` are moot: the file is renamed into place only once whole
        self.stats.count("put_object", memoryview(data).nbytes)

        def write(fd: int) -> None:
            view = memoryview(data).cast("B")
            while view:
                view = view[os.write(fd, view):]

        await asyncio.to_thread(self._write_atomic, path, write)

    async def put_file(self, key: str, path: Path) -> None:
        dest = self._path(key)

        def copy() -> None:
            try:
                src = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                _raise(exc, f"cannot read {path} to store it as {key}", local=True)
            try:
                self.stats.count("put_object", os.fstat(src).st_size)
                self._write_atomic(dest, lambda fd: _copy_fd(src, fd))
            finally:
                os.close(src)

        await asyncio.to_thread(copy)

    def _write_atomic(self, path: Path, fill: _Filler) -> None:
        tmp = path.with_name(f"{path.name}{TMP_MARK}{secrets.token_hex(6)}")
        try:
            # A concurrent delete() may remove the empty parent between mkdir and open: try again.
            for attempt in range(3):
                _makedirs_durable(path.parent, self.root)
                try:
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
                    break
                except FileNotFoundError:
                    if attempt == 2:
                        raise
            try:
                fill(fd)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            _fsync_dir(path.parent)
        except StoreError:
            _unlink_quietly(tmp)
            raise
        except OSError as exc:
            _unlink_quietly(tmp)
            _raise(exc, f"cannot write {path}")
        except BaseException:
            _unlink_quietly(tmp)
            raise

    # --- reading -----------------------------------------------------------------------

    async def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        path = self._path(key)
        _check_range(start, end)

        def read() -> bytes:
            try:
                with open(path, "rb", buffering=0) as f:
                    f.seek(start)
                    return f.read() if end is None else f.read(max(0, end - start))
            except OSError as exc:
                _raise(exc, f"cannot read {key}", key=key)

        self.stats.count("get_object")
        data = await asyncio.to_thread(read)
        self.stats.bytes_received += len(data)
        return data

    async def get_tagged(self, key: str) -> tuple[bytes, str]:
        """The whole object and the etag `list` shows for exactly these bytes (base.TaggedGet): the fstat of the
        descriptor read from, not a stat of the name, as a PUT renames a new file (a new inode) over it at any
        time, and a file is never written again once it has its name."""
        path = self._path(key)

        def read() -> tuple[bytes, str]:
            try:
                with open(path, "rb", buffering=0) as f:
                    return f.read(), _etag(os.fstat(f.fileno()))
            except OSError as exc:
                _raise(exc, f"cannot read {key}", key=key)

        self.stats.count("get_object")
        data, tag = await asyncio.to_thread(read)
        self.stats.bytes_received += len(data)
        return data, tag

    async def open(
        self, key: str, start: int = 0, end: int | None = None, chunk: int = 1 << 20
    ) -> AsyncGenerator[bytes, None]:
        """Stream [start, end); the file is opened on the first iteration and closed when the
        iterator finishes or is closed (use `contextlib.aclosing` when stopping early)."""
        path = self._path(key)
        _check_range(start, end)

        def open_() -> BinaryIO:
            try:
                f = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by the generator
                f.seek(start)
                return f
            except OSError as exc:
                _raise(exc, f"cannot read {key}", key=key)

        def read(f: BinaryIO, n: int) -> bytes:
            try:
                return f.read(n)
            except OSError as exc:
                _raise(exc, f"cannot read {key}", key=key)

        self.stats.count("get_object")
        f = await asyncio.to_thread(open_)
        try:
            pos = start
            while end is None or pos < end:
                n = chunk if end is None else min(chunk, end - pos)
                data = await asyncio.to_thread(read, f, n)
                if not data:
                    break
                pos += len(data)
                self.stats.bytes_received += len(data)
                yield data
        finally:
            # Closing a read-only descriptor does not wait on the disk, and finally blocks of
            # async generators may run during loop shutdown, so no thread here.
            f.close()

    async def head(self, key: str) -> ObjectInfo:
        path = self._path(key)
        self.stats.count("head_object")

        def stat_() -> ObjectInfo:
            try:
                st = os.stat(path)
            except OSError as exc:
                _raise(exc, f"cannot stat {key}", key=key)
            if not stat.S_ISREG(st.st_mode):
                raise ObjectNotFound(f"object {key} not found", "list the prefix to see which keys exist")
            return ObjectInfo(key, st.st_size)

        return await asyncio.to_thread(stat_)

    async def list(self, prefix: str) -> list[ObjectInfo]:
        check_key(prefix, prefix=True)
        out = await asyncio.to_thread(self._list, prefix, False)
        for _ in range(max(1, -(-len(out) // LIST_PAGE))):
            self.stats.count("list_objects_v2")
        return out

    async def list_page(self, prefix: str, start_after: str = "", max_keys: int = 1000) -> builtins.list[ObjectInfo]:
        check_key(prefix, prefix=True)
        out = await asyncio.to_thread(self._list, prefix, False)
        self.stats.count("list_objects_v2")
        return [o for o in out if o.key > start_after][:max(1, min(max_keys, LIST_PAGE))]

    async def list_dirs(self, prefix: str) -> builtins.list[str]:
        check_dir_prefix(prefix)
        out = await asyncio.to_thread(self._list_dirs, prefix)
        for _ in range(max(1, -(-len(out) // LIST_PAGE))):
            self.stats.count("list_objects_v2")
        return out

    def _list_dirs(self, prefix: str) -> builtins.list[str]:
        # S3 shows a name only while an object is stored below it: an empty directory (a delete that
        # lost a race with its pruning) or one holding only temporary files is not one.
        try:
            with os.scandir(self.root / prefix if prefix else self.root) as it:
                dirs = [e.name for e in it if e.is_dir(follow_symlinks=False)]
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            _raise(exc, f"cannot list {prefix!r}")
        return sorted(name for name in dirs if self._holds_an_object(f"{prefix}{name}/"))

    def _holds_an_object(self, rel: str) -> bool:
        stack = [rel]
        while stack:
            d = stack.pop()
            try:
                with os.scandir(self.root / d) as it:
                    for entry in it:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(f"{d}{entry.name}/")
                        elif TMP_MARK not in entry.name:
                            return True
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as exc:
                _raise(exc, f"cannot list {d!r}")
        return False

    def _list(self, prefix: str, tmp: bool) -> builtins.list[ObjectInfo]:
        """Objects (or, with tmp=True, temporary files) whose key starts with `prefix`."""
        # Walk only the deepest directory the prefix names, not the whole store.
        base = prefix[: prefix.rfind("/") + 1]
        out: list[ObjectInfo] = []
        stack = [base]
        while stack:
            rel = stack.pop()
            try:
                with os.scandir(self.root / rel if rel else self.root) as it:
                    for entry in it:
                        key = rel + entry.name
                        if entry.is_dir(follow_symlinks=False):
                            if (key + "/").startswith(prefix):
                                stack.append(key + "/")
                        elif key.startswith(prefix) and (TMP_MARK in entry.name) == tmp:
                            with contextlib.suppress(FileNotFoundError):  # deleted or renamed meanwhile
                                st = entry.stat()
                                out.append(ObjectInfo(key, st.st_size, _etag(st)))
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as exc:
                _raise(exc, f"cannot list {prefix!r}")
        out.sort(key=lambda o: o.key)
        return out

    # --- removing ----------------------------------------------------------------------

    async def delete(self, keys: Iterable[str]) -> None:
        paths = [self._path(k) for k in keys]
        for _ in range(-(-len(paths) // LIST_PAGE)):
            self.stats.count("delete_objects")
        if paths:
            await asyncio.to_thread(self._delete, paths)

    def _delete(self, paths: builtins.list[Path]) -> None:
        for path in paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
            except IsADirectoryError:
                continue  # a "directory" is not an object: nothing to delete
            except OSError as exc:
                _raise(exc, f"cannot delete {path}")
            self._prune_dirs(path.parent)

    def _prune_dirs(self, d: Path) -> None:
        # Best effort: empty directories of deleted logs would otherwise pile up and slow listing.
        while d != self.root and self.root in d.parents:
            try:
                d.rmdir()
            except OSError:
                return
            d = d.parent

    async def abort_uploads(self, prefix: str) -> int:
        """Remove temporary files older than a minute (left by a crash); there are no
        multipart uploads here, so return 0."""
        check_key(prefix, prefix=True)

        def sweep() -> None:
            cutoff = time.time() - STALE_TMP_SECONDS
            for info in self._list(prefix, True):
                path = self.root / info.key
                try:
                    if os.stat(path).st_mtime < cutoff:
                        os.unlink(path)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    _raise(exc, f"cannot remove the stale temporary file {info.key}")

        await asyncio.to_thread(sweep)
        return 0

    async def close(self) -> None:
        return None


# --- helpers ---------------------------------------------------------------------------


def _etag(st: os.stat_result) -> str:
    """A file's etag as listed (ObjectInfo.etag): a PUT renames a new file in, a new inode."""
    return f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"


def _check_range(start: int, end: int | None) -> None:
    if start < 0 or (end is not None and end < 0):
        raise ValueError(f"byte range [{start}, {end}) has a negative bound")


def _copy_fd(src: int, dst: int) -> None:
    """Copy a whole file in the kernel where it can (sendfile), else through a buffer."""
    offset = 0
    try:
        while True:
            sent = os.sendfile(dst, src, offset, _COPY_CHUNK)
            if sent == 0:
                return
            offset += sent
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP) or offset:
            raise
    while block := os.pread(src, _COPY_CHUNK, offset):
        view = memoryview(block)
        while view:
            view = view[os.write(dst, view):]
        offset += len(block)


def _makedirs_durable(d: Path, root: Path) -> None:
    """mkdir -p, fsyncing the parent of every directory created so the new name survives a crash."""
    missing: list[Path] = []
    while not d.is_dir():
        missing.append(d)
        if d == root or d.parent == d:
            break
        d = d.parent
    for m in reversed(missing):
        try:
            m.mkdir()
        except FileExistsError:
            continue
        _fsync_dir(m.parent)


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(p: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(p)


def _raise(exc: OSError, what: str, *, key: str | None = None, local: bool = False) -> NoReturn:
    """Translate an OSError into the store's errors, with a hint."""
    if key is not None and isinstance(exc, (FileNotFoundError, NotADirectoryError, IsADirectoryError)):
        raise ObjectNotFound(f"object {key} not found", "list the prefix to see which keys exist") from exc
    reason = exc.strerror or str(exc)
    if local:
        raise StoreError(f"{what}: {reason}", "check that the local file exists and is readable") from exc
    if isinstance(exc, PermissionError):
        raise StoreError(f"{what}: {reason}", "check the permissions of the directory in store.url") from exc
    if isinstance(exc, (NotADirectoryError, IsADirectoryError, FileExistsError)):
        raise StoreError(f"{what}: {reason}",
                         "a key and a key prefix collide on disk (one is a file, one a directory)") from exc
    if exc.errno in _TRANSIENT:
        raise StoreUnavailable(f"{what}: {reason}",
                               "check free space and the health of the disk behind store.url") from exc
    raise StoreError(f"{what}: {reason}", "check the directory in store.url") from exc
