"""What wakes the watcher between its periodic passes: the kernel's word that an entry was created in,
or renamed into, a spool directory — a log started (its directory, run.json), a segment sealed (renamed
to `N.log`), a log ended (exit.json). Never an append: the watches ask only for IN_CREATE | IN_MOVED_TO,
so the kernel drops the writes to open segments before they reach us and a running log costs no wake-up.

Why inotify itself and not watchfiles: watchfiles asks for every kind of change (IN_MODIFY included) and
calls a Python filter for each, ≈ 200 a second for one 10 KB/s log (docs/checkpoints.md §12). And why not
event files written by the agent: the kernel already knows, every agent (old ones too) is covered, and
nothing new lands in the spool to be cleaned up or planted.

Linux only, through libc (ctypes). Where the kernel has no inotify (another OS), `portable` watches with
watchfiles instead (every append costs a filtered event there, but a seal still wakes the watcher at
once); where inotify's watch limit is reached, `start` and `broken` say so, and the watcher finds
everything by its periodic pass, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import struct
from pathlib import Path
from typing import Any

from shipper.format import names

from .spool import SpoolDamaged, open_child_dir

log = logging.getLogger("logship.watcher")

IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_ISDIR = 0x40000000
MASK = IN_CREATE | IN_MOVED_TO | IN_MOVE_SELF | IN_ONLYDIR
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (of the name that follows)
READ_SIZE = 64 << 10
READS_AT_ONCE = 16  # then back to the loop (a flood of junk entries must not hold it); it calls again
LOG_DEPTH = 2  # <spool>/<task>/<host>

_libc: Any = None


def _inotify() -> Any:
    """libc with the three inotify calls typed (raises OSError where there is none)."""
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        lib.inotify_init1.argtypes = [ctypes.c_int]
        lib.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        lib.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        _libc = lib
    return _libc


def news(parts: tuple[str, ...], name: str, mask: int) -> bool:
    """Whether an entry `name` created in (or renamed into) the spool directory `parts` is worth a pass."""
    if len(parts) < LOG_DEPTH:  # a new task or log directory (watched as soon as it is seen)
        return bool(mask & IN_ISDIR) and names.ID_RE.fullmatch(name) is not None
    return name in (names.RUN_FILE, names.EXIT_FILE) or names.SEGMENT_RE.fullmatch(name) is not None


class SpoolWatch:
    """inotify watches on the spool, its task directories and its log directories; sets `wake` on news.

    Directories are opened one level at a time without following a link (as the watcher reads them),
    and watched through their descriptor: a link planted in the spool is never watched through.
    """

    def __init__(self, spool: Path, wake: asyncio.Event, fd: int) -> None:
        self.spool = spool
        self.wake = wake
        self.fd = fd
        self.dirs: dict[int, tuple[str, ...]] = {}  # watch descriptor -> () for the spool, (task,), (task, host)
        self.wakeups = 0  # times `wake` was set
        self.broken = ""  # why the watches may miss something (the watcher then polls as before)
        self._root_lost = False

    @classmethod
    def start(cls, spool: Path, wake: asyncio.Event) -> SpoolWatch | None:
        """Watch the spool; None (said once in the log) where inotify cannot be had."""
        try:
            fd = _inotify().inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
            if fd < 0:
                raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        except (OSError, AttributeError) as exc:
            log.warning("no inotify (%s): the watcher finds sealed segments and new logs by polling the spool "
                        "every second (hint: on Linux, raise fs.inotify.max_user_instances)", exc)
            return None
        w = cls(spool, wake, fd)
        w._add(())
        asyncio.get_running_loop().add_reader(fd, w._readable)
        return w

    def close(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self.fd)
        os.close(self.fd)

    def ensure(self) -> None:
        """After a pass: watch the spool again if it was removed and made anew (the pass makes it)."""
        if self._root_lost:
            self._root_lost = False
            self._add(())

    # --- watches ----------------------------------------------------------------------------

    def _open(self, parts: tuple[str, ...]) -> int:
        fd = os.open(self.spool, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # the operator's path, as it is
        where = self.spool
        for part in parts:
            where = where / part
            try:
                child = open_child_dir(fd, part, where)
            finally:
                os.close(fd)
            fd = child
        return fd

    def _add(self, parts: tuple[str, ...]) -> None:
        """Watch directory `parts` and, above the log level, the task or log directories it holds."""
        try:
            fd = self._open(parts)
        except (OSError, SpoolDamaged):  # gone, a link, not a directory: nothing to watch there
            if not parts:
                self._root_lost = True
            return
        children: list[str] = []
        try:
            wd = _inotify().inotify_add_watch(self.fd, f"/proc/self/fd/{fd}".encode(), MASK)
            if wd < 0:
                self._failed(parts, ctypes.get_errno())
                return
            self.dirs[wd] = parts
            if len(parts) < LOG_DEPTH:  # listed after the watch is in place: nothing falls between
                with os.scandir(fd) as it:
                    children = [e.name for e in it if names.ID_RE.fullmatch(e.name) and e.is_dir(follow_symlinks=False)]
        except OSError:
            return
        finally:
            os.close(fd)
        for name in children:
            self._add((*parts, name))

    def _failed(self, parts: tuple[str, ...], err: int) -> None:
        if err in (errno.ENOENT, errno.ENOTDIR):
            return
        why = os.strerror(err)
        if err == errno.ENOSPC:
            why = "the inotify watch limit is reached"
        if not self.broken:
            log.warning("cannot watch %s (%s): sealed segments and new logs there are found by polling every "
                        "second (hint: raise fs.inotify.max_user_watches)", self.spool.joinpath(*parts), why)
        self.broken = why

    # --- events -----------------------------------------------------------------------------

    def _readable(self) -> None:
        try:
            self._read_events()
        except Exception as exc:  # never the watcher's end: it still has its periodic pass
            if not self.broken:
                log.exception("reading the spool's inotify events failed; polling every second instead")
            self.broken = f"reading events failed: {exc}"
            asyncio.get_running_loop().remove_reader(self.fd)  # not called again and again
            self.wake.set()

    def _read_events(self) -> None:
        woke = rescan = False
        for _ in range(READS_AT_ONCE):
            try:
                buf = os.read(self.fd, READ_SIZE)
            except BlockingIOError:
                break
            except OSError as exc:  # cannot happen with a healthy inotify fd; polling still finds everything
                self.broken = str(exc)
                break
            off = 0
            while off + _EVENT.size <= len(buf):
                wd, mask, _cookie, n = _EVENT.unpack_from(buf, off)
                name = os.fsdecode(buf[off + _EVENT.size:off + _EVENT.size + n].split(b"\0", 1)[0])
                off += _EVENT.size + n
                if mask & IN_Q_OVERFLOW:  # events were lost: look at everything again
                    woke = rescan = True
                    continue
                parts = self.dirs.get(wd)
                if parts is None:
                    continue
                if mask & (IN_IGNORED | IN_MOVE_SELF):  # removed or moved away: its path no longer names it
                    del self.dirs[wd]
                    if mask & IN_MOVE_SELF:
                        _inotify().inotify_rm_watch(self.fd, wd)
                    self._root_lost = self._root_lost or not parts
                    woke = True
                    continue
                if news(parts, name, mask):
                    woke = True
                    if len(parts) < LOG_DEPTH:
                        self._add((*parts, name))
        if rescan:
            self._add(())
        if woke:
            self.wakeups += 1
            self.wake.set()


async def portable(spool: Path, wake: asyncio.Event, stop: asyncio.Event) -> None:
    """Set `wake` on a log's start, a seal or an end where inotify cannot be had: watchfiles (FSEvents,
    kqueue, …) sees appends too, and the filter drops them. If it fails, the periodic pass finds all."""
    try:
        import watchfiles

        def interesting(_change: object, path: str) -> bool:
            return (not path.endswith(names.OPEN_SUFFIX) and ".tmp-" not in path
                    and not path.endswith(names.WATCHER_STATE_FILE))

        # watchfiles' defaults (debounce 1600 ms, step 50 ms) would add up to a second and a half.
        async for _ in watchfiles.awatch(spool, watch_filter=interesting, debounce=50, step=10,
                                         stop_event=stop, recursive=True):
            wake.set()
    except Exception as exc:  # noqa: BLE001 — any failure here only costs the wake-ups
        log.warning("cannot watch the spool with watchfiles either (%s): the watcher polls it every second", exc)
