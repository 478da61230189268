"""Spool JSON files (run.json, exit.json, dropped.json) read again only when they changed: the watcher looks at a
running log every checkpoint interval, and opening, reading, parsing and checking them each time was a share of
its fixed cost per checkpoint (docs/checkpoints.md §12, item 5).

A file is known by (inode, mtime, ctime, size) from a stat that does not follow links. The agent and the watcher
replace these files whole (write_json_atomic: a new inode each time), so any rewrite changes the key; the stat is
taken before the read, so a file replaced between the two is read again at the next look. What the cache returns
is the parsed document as checked when read: callers do not modify it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .files import read_json


class JsonCache:
    """Parsed spool JSON files of one process, by path."""

    def __init__(self) -> None:
        self._docs: dict[str, tuple[tuple[int, int, int, int], Any]] = {}

    def read(self, path: Path, *, dir_fd: int | None = None, check: Callable[[Any], None] | None = None) -> Any:
        """As read_json (None if absent; SpoolDamaged for a link, a file too large or not JSON), then `check`
        (which raises for a document not to trust), unless the file is as it was when last read and checked."""
        where = str(path)
        try:
            st = os.stat(path.name if dir_fd is not None else path, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            self._docs.pop(where, None)
            return None
        key = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
        got = self._docs.get(where)
        if got is not None and got[0] == key and stat.S_ISREG(st.st_mode):
            return got[1]
        self._docs.pop(where, None)
        doc = read_json(path, dir_fd=dir_fd)
        if doc is not None and check is not None:
            check(doc)
        if doc is not None and stat.S_ISREG(st.st_mode):
            self._docs[where] = (key, doc)
        return doc

    def clear(self) -> None:
        """Forget everything (the watcher does at each full pass: logs gone leave nothing behind)."""
        self._docs.clear()
