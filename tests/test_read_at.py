"""segment_read.read_at: a checkpoint's bytes read into its thread's buffer, which the next read reuses."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from shipper import segment_read
from shipper.segment_read import HELD_MAX, read_at


def test_read_at_reads_exactly_and_reuses_its_threads_buffer(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    (tmp_path / "f").write_bytes(data)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        a = read_at(fd, 1000, 10)
        assert bytes(a) == data[10:1010]
        first = a.obj
        del a
        b = read_at(fd, 2 << 20, 5)  # larger than the buffer was: a new one, kept
        assert bytes(b) == data[5:5 + (2 << 20)]
        kept = b.obj
        assert kept is not first
        del b
        c = read_at(fd, 100, (3 << 20) - 40)  # past the end: what is there
        assert bytes(c) == data[-40:] and c.obj is kept
        del c
        other: list[object] = []  # another thread has a buffer of its own
        t = threading.Thread(target=lambda: other.append(read_at(fd, 10, 0).obj))
        t.start()
        t.join()
        assert other[0] is not kept
        big = read_at(fd, HELD_MAX + 1, 0)  # beyond what a thread keeps: a buffer of its own, not kept
        assert bytes(big) == data[:HELD_MAX + 1][:len(data)] and big.obj is not segment_read._held.buf
    finally:
        os.close(fd)
