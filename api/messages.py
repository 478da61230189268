"""The tail's messages as they go on the wire (JSON text, one per WebSocket message or SSE `data:` line), and
the memo of recent chunks' messages that the followers of a log share (api/hub.py keeps one per log)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

from shipper.format import index

from .source import LogView

MESSAGE_BYTES = 256 << 10  # data per message at most: bounded memory per send, within clients' frame limits
MEMO_BYTES = 4 << 20  # memory of the recent chunks' messages that followers share (Memo)
MEMO_CHUNK_BYTES = 64 << 10  # larger chunks are few messages: encoded per follower, not kept


class Event(NamedTuple):
    text: str  # the JSON message
    after: int  # the log offset after it (SSE id)
    data_bytes: int = 0
    skipped_bytes: int = 0


# One encoder, made once: json.dumps with options builds a new one per call. JSON escapes \n and \r
# inside strings, so a message is always one SSE `data:` line.
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def encode(doc: dict[str, Any]) -> str:
    return _JSON.encode(doc)


def data_events(c: index.Chunk, start: int, data: bytes) -> list[Event]:
    """Chunk `c`'s messages from log offset `start` (pieces of at most MESSAGE_BYTES)."""
    out = []
    while data:
        n = len(data)
        if n > MESSAGE_BYTES:
            n = MESSAGE_BYTES
            while n > MESSAGE_BYTES - 4 and data[n] & 0xC0 == 0x80:  # don't cut a UTF-8 sequence
                n -= 1
        piece, data = data[:n], data[n:]
        data_json = _JSON.encode(piece.decode("utf-8", "replace"))
        text = f'{{"offset":{start},"ts":{c.ts_ns},"stream":"{c.stream_name}","data":{data_json}}}'
        out.append(Event(text, start + n, n))
        start += n
    return out


class Shared(NamedTuple):
    events: list[Event]
    end: int  # log offset after the chunk
    seq: int  # the spool segment it is in (0: read from the store)
    idx_end: int  # position in that segment's index after its record


# What a memo entry costs beside its messages' text (the dict slot, Shared, its list and ints), and each
# message beside its text (Event and its ints): a line of 80 bytes is ≈ 600 bytes of objects, so bounding the
# memo by the log bytes it holds let it grow to 30 MB and more (tracemalloc; tests/test_tail_memo.py).
_ENTRY_COST = 320
_EVENT_COST = 160


def _cost(shared: Shared) -> int:
    return _ENTRY_COST + sum(sys.getsizeof(e.text) + _EVENT_COST for e in shared.events)


class Memo:
    """The messages of a log's recent whole chunks, kept in its feed and bounded by MEMO_BYTES of memory.

    Live followers are mostly at the same place: the first to wake reads and encodes a chunk, the
    others take it from here by offset, with no syscall and no encoding of their own.
    """

    def __init__(self) -> None:
        self.items: dict[int, Shared] = {}  # by chunk offset, oldest first
        self.size = 0

    def next(self, pos: int, seq: int) -> Shared | None:
        """The chunk at `pos` if a follower in spool segment `seq` read it already."""
        hit = self.items.get(pos)
        return hit if hit is not None and hit.seq == seq else None

    def events(self, c: index.Chunk, start: int, data: Callable[[], bytes], seq: int = 0,
               idx_end: int = 0) -> list[Event]:
        """The messages of chunk `c` from log offset `start`; `data()` gives those bytes, called on a miss."""
        if start != c.offset or c.length > MEMO_CHUNK_BYTES:
            return data_events(c, start, data())
        hit = self.items.get(c.offset)
        if hit is None:
            hit = self.items[c.offset] = Shared(data_events(c, start, data()), c.end, seq, idx_end)
            self.size += _cost(hit)
            while self.size > MEMO_BYTES:
                self.size -= _cost(self.items.pop(next(iter(self.items))))
        elif seq and hit.seq != seq:  # read from the store first: note where it is in the spool, for chaining
            self.items[c.offset] = Shared(hit.events, c.end, seq, idx_end)
        return hit.events


def skipped_event(a: int, b: int) -> Event:
    return Event(encode({"event": "skipped", "from": a, "to": b, "bytes": b - a}), b, 0, b - a)


def end_event(view: LogView) -> Event:
    ex = view.exit or {}
    return Event(encode({"event": "end", "status": view.status, "exit_code": ex.get("exit_code"),
                          "signal": ex.get("signal"), "size": view.size}), view.size)


def error_event(code: str, detail: str, hint: str = "") -> Event:
    return Event(encode({"event": "error", "error": code, "detail": detail, "hint": hint}), -1)
