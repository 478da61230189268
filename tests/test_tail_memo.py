"""The tail's memo of recent messages (api/hub.py `Memo`) is bounded by the memory it holds, not by the log
bytes in it: a chatty log of short lines once made it hold ≈ 600 bytes of objects per 80-byte line."""

from __future__ import annotations

import tracemalloc

from api.messages import MEMO_BYTES, Memo
from shipper.format import index

LINE = b"2026-12-05T10:00:00Z worker-7 step 12345 of 99999: copied a block, all is well\n"


def chunk(i: int, data: bytes = LINE) -> index.Chunk:
    return index.Chunk(seq=1, ts_ns=1_700_000_000_000_000_000 + i, offset=i * len(data), length=len(data),
                       lines=1, stream=1, flags=0)


def test_the_memo_of_short_lines_holds_about_its_bound_in_memory() -> None:
    memo = Memo()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(100_000):  # 8 MB of log: twice the bound in log bytes, 15 times it in objects
            c = chunk(i)
            memo.events(c, c.offset, lambda: LINE)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert MEMO_BYTES * 0.6 < held < MEMO_BYTES * 1.3, (held, len(memo.items))
    assert memo.size <= MEMO_BYTES


def test_followers_at_the_same_chunk_share_its_messages() -> None:
    memo = Memo()
    c = chunk(7)
    calls = []

    def data() -> bytes:
        calls.append(1)
        return LINE

    first = memo.events(c, c.offset, data)
    assert memo.events(c, c.offset, data) is first and len(calls) == 1
    assert first[0].after == c.end and first[0].data_bytes == len(LINE)
    for i in range(8, 100_000):  # pushed out once the bound is reached: read again on the next ask
        memo.events(chunk(i), chunk(i).offset, lambda: LINE)
    assert memo.events(c, c.offset, data) is not first and len(calls) == 2
