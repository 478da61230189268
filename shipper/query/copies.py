"""The query copy: a sealed segment's lines as one Parquet object (DESIGN §4), read by SQL (docs/query.md)."""

from __future__ import annotations

import asyncio
import io
import logging
import mmap
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import accumulate, pairwise
from pathlib import Path

import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]

from shipper.format import index, names
from shipper.format.index import Chunk
from shipper.spool import read_json

log = logging.getLogger("logship.querycopy")

LINE_MAX = 64 * 1024  # characters of a line kept in `line`; longer lines are cut and flagged `truncated`
GROUP_BYTES = 4 << 20  # lines of about this many bytes form one row group (memory is a few times this)
CODEC = "zstd"
ZSTD_LEVEL = 1  # Parquet pages: writing is most of the build's time; level 3 is 3% smaller and ≈ 20% slower

# Arrow types written for names.LINES_COLUMNS; field ids for readers that map columns by id, not name.
_DICT = pa.dictionary(pa.int8(), pa.string())  # Parquet: a string column, dictionary-encoded
_ARROW = {"VARCHAR": pa.string(), "INTEGER": pa.int32(), "BIGINT": pa.int64(), "TIMESTAMP": pa.timestamp("us"),
          "BOOLEAN": pa.bool_()}
SCHEMA = pa.schema([pa.field(n, _DICT if n in ("task", "host", "stream") else _ARROW[t],
                             metadata={b"PARQUET:field_id": str(i).encode()})
                    for i, (n, t) in enumerate(names.LINES_COLUMNS, start=1)])
_STATS = ["task", "host", "seq", "line_no", "ts", "stream", "byte_offset", "byte_end"]  # not `line`: huge min/max

# Builds run one at a time on one thread of their own: CPU-bound, they gain nothing from more, and
# malloc keeps a free-memory arena per thread that ran one (on asyncio's pool: ~100 MB each).
_BUILDER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="logship-querycopy")


@dataclass(frozen=True)
class QueryCopy:
    key: str
    data: bytes
    rows: int


def first_line_no(log_dir: Path, seq: int, uploaded_lines: Mapping[int, int]) -> int:
    """line_no of the first line ended in segment `seq`: 1 + the lines of every earlier segment.

    Counts come from the manifest's entries (`uploaded_lines`), else the spool's chunk index, else the
    spool's record of segments dropped at the quota; the same inputs give the same number on a re-upload.
    """
    dropped = {e["seq"]: e.get("lines", 0) for e in read_json(log_dir / names.DROPPED_FILE) or []}
    total = 0
    for s in range(1, seq):
        if s in uploaded_lines:
            total += uploaded_lines[s]
        elif s in dropped:
            total += dropped[s]
        else:
            total += sum(c.lines for c in index.read(str(names.spool_index(log_dir, s)), missing_ok=True))
    return total + 1


@dataclass(frozen=True)
class Inputs:
    """A sealed segment to copy: its chunk index, and its bytes as a spool file or in memory."""

    chunks: list[Chunk]
    path: Path | None
    data: bytes | None


async def build_for_spool(log_dir: Path, task: str, host: str, seq: int, uploaded_lines: Mapping[int, int],
                          inputs: Inputs) -> QueryCopy | None:
    """The copy of sealed segment `seq` (built off the event loop), or None if it cannot be made.

    The copy is derived data: a failure to derive it is logged and must never stop the bytes from shipping.
    """
    def run() -> QueryCopy | None:
        first = first_line_no(log_dir, seq, uploaded_lines)
        if inputs.path is not None:
            return build_file(inputs.path, inputs.chunks, task, host, seq, first)
        if not inputs.chunks or inputs.data is None:
            return None
        return build(inputs.data, inputs.chunks, task, host, seq, first)

    try:
        return await asyncio.get_running_loop().run_in_executor(_BUILDER, run)
    except Exception:
        log.exception("%s/%s: no query copy of segment %d (its bytes ship anyway)", task, host, seq)
        return None


def build_file(path: Path, chunks: Sequence[Chunk], task: str, host: str, seq: int,
               first_line: int) -> QueryCopy | None:
    """The copy of the segment file at `path` (None for an empty segment)."""
    if not chunks:
        return None
    with open(path, "rb") as f:
        size = chunks[-1].end - chunks[0].offset
        if size == 0:
            return None
        # mmap: a group's bytes are copied once (into the stream's text), the segment never is whole
        with mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) as mm:
            return build(memoryview(mm), chunks, task, host, seq, first_line)


def build(data: memoryview | bytes, chunks: Sequence[Chunk], task: str, host: str, seq: int,
          first_line: int) -> QueryCopy:
    """The Parquet copy of a segment: `data` is its raw bytes, `chunks` its index, `first_line` the line_no
    its first ended line gets. Rows are in the order their lines end (line_no order)."""
    view = memoryview(data)
    base = chunks[0].offset
    sink = io.BytesIO()
    rows = 0
    level = ZSTD_LEVEL if CODEC == "zstd" else None
    with pq.ParquetWriter(sink, SCHEMA, compression=CODEC, compression_level=level, write_page_index=False,
                          use_dictionary=["task", "host", "stream"], write_statistics=_STATS) as writer:
        for group in _groups(view, base, chunks):
            table, ended = _group_table(view, base, group, task, host, seq, first_line)
            first_line += ended
            rows += table.num_rows
            writer.write_table(table, row_group_size=max(1, table.num_rows))
    return QueryCopy(names.lines_key(names.lines_date(chunks[0].ts_ns), task, host, seq), sink.getvalue(), rows)


def _groups(view: memoryview, base: int, chunks: Sequence[Chunk]) -> list[Sequence[Chunk]]:
    """Runs of chunks of about GROUP_BYTES, cut only where no stream is in the middle of a line."""
    out: list[Sequence[Chunk]] = []
    start = 0
    size = 0
    mid_line: dict[int, bool] = {}
    for i, c in enumerate(chunks):
        size += c.length
        if c.length:
            mid_line[c.stream] = view[c.end - base - 1] != 0x0A
        if size >= GROUP_BYTES and not any(mid_line.values()):
            out.append(chunks[start:i + 1])
            start, size = i + 1, 0
    if start < len(chunks):
        out.append(chunks[start:])
    return out


def _group_table(view: memoryview, base: int, chunks: Sequence[Chunk], task: str, host: str, seq: int,
                 first_line: int) -> tuple[pa.Table, int]:
    """Rows of one group and the number of newlines in it.

    A line is its stream's bytes up to a newline, so a partial chunk of one stream with the other
    stream's chunks in between still makes one line. Python loops only over chunks.
    """
    streams: dict[int, list[int]] = {}  # stream -> positions in `chunks`
    for j, c in enumerate(chunks):
        if c.length:
            streams.setdefault(c.stream, []).append(j)
    parts = {s: _StreamLines(view, base, [chunks[j] for j in js]) for s, js in streams.items()}
    # Newlines per chunk across streams, in log order, give each ended line its rank: line_no.
    newlines = [0] * len(chunks)
    for s, js in streams.items():
        for j, n in zip(js, parts[s].newlines_per_chunk(), strict=True):
            newlines[j] = n
    before = list(accumulate(newlines, initial=0))
    total = before[-1]
    tails = sorted((p.tail_offset(), s) for s, p in parts.items() if p.has_tail)
    tail_no = {s: first_line + total + k for k, (_, s) in enumerate(tails)}
    tables = [p.table(task, host, seq, index.STREAM_NAMES.get(s, "unknown"),
                      [first_line + before[j] for j in streams[s]], tail_no.get(s))
              for s, p in parts.items()]
    if not tables:  # only empty chunks
        return SCHEMA.empty_table(), 0
    table = tables[0] if len(tables) == 1 else pa.concat_tables(tables).sort_by("line_no")
    return table, total


class _StreamLines:
    """The lines of one stream within a group: its chunks' bytes joined, split at newlines.

    Per line, only bytes.split and map(len) run in the interpreter's C loops; the rest is Arrow compute.
    """

    def __init__(self, view: memoryview, base: int, chunks: list[Chunk]) -> None:
        self.chunks = chunks
        first, last = chunks[0], chunks[-1]
        if last.end - first.offset == sum(c.length for c in chunks):  # contiguous: one stream only
            text = view[first.offset - base:last.end - base].tobytes()
        else:
            text = b"".join([view[c.offset - base:c.end - base] for c in chunks])
        self.text = text
        pieces = text.split(b"\n")
        self.ended = len(pieces) - 1  # lines ended by a newline
        self.has_tail = pieces[-1] != b""
        self.n = self.ended + self.has_tail  # rows
        self.lens = array("q", map(len, pieces[:self.n]))
        del pieces
        span = pc.add(_ints(pa.int64(), self.lens), 1)  # a line and its newline
        # ends[i]: position in the stream's text just past row i's newline; starts[i]: its first byte
        self.ends = pc.cumulative_sum(span)
        self.starts = pc.subtract(self.ends, span)
        # where each chunk starts in the stream's text, and the shift from there to the whole log's offsets
        self.pos = list(accumulate((c.length for c in chunks[:-1]), initial=0))
        self.shift = [c.offset - p for c, p in zip(chunks, self.pos, strict=True)]
        ends, starts = _view(self.ends)[:self.ended], _view(self.starts)
        # per chunk: this stream's newlines before it, and the rows starting before it
        self.nl_before = [*(bisect_right(ends, p) for p in self.pos), self.ended]
        self.starts_before = [*(bisect_left(starts, p) for p in self.pos), self.n]
        self.tail_start = starts[-1] if self.has_tail else 0

    def newlines_per_chunk(self) -> list[int]:
        return _diff(self.nl_before)

    def tail_offset(self) -> int:
        j = bisect_right(self.pos, self.tail_start) - 1
        return self.tail_start + self.shift[j]

    def table(self, task: str, host: str, seq: int, stream: str, chunk_first_no: list[int],
              tail_no: int | None) -> pa.Table:
        n, ended = self.n, self.ended
        # Per chunk: how many rows start in it (ts and byte_offset come from there) and how many end
        # in it (line_no, byte_end); each per-chunk value repeated that many times is a column.
        n_start, n_end = _diff(self.starts_before), self.newlines_per_chunk()
        # line i ends in chunk j: its number is chunk j's first number + (i - this stream's lines before j)
        k = [no - f for no, f in zip(chunk_first_no, self.nl_before, strict=False)]  # nl_before: one more, the total
        line_no = pc.add(_repeat(k, n_end), _arange(ended))
        byte_end = pc.add(_repeat(self.shift, n_end), self.ends[:ended])
        if self.has_tail:
            assert tail_no is not None
            line_no = pa.concat_arrays([line_no, pa.array([tail_no], pa.int64())])
            byte_end = pa.concat_arrays([byte_end, pa.array([self.chunks[-1].end], pa.int64())])
        lines, truncated = self._text()
        return pa.Table.from_arrays([
            _constant(task, n),
            _constant(host, n),
            pa.Array.from_buffers(pa.int32(), n, [None, pa.py_buffer(array("i", [seq]) * n)]),
            line_no,
            _repeat([c.ts_ns // 1000 for c in self.chunks], n_start).cast(pa.timestamp("us")),
            _constant(stream, n),
            pc.add(_repeat(self.shift, n_start), self.starts),
            byte_end,
            _flags(n, last=self.has_tail),
            truncated,
            lines,
        ], schema=SCHEMA)

    def _text(self) -> tuple[pa.Array, pa.Array]:
        """`line` (invalid UTF-8 replaced, cut at LINE_MAX characters) and `truncated`, built from buffers."""
        n = self.n
        text, lens = self.text, self.lens
        if not (text.isascii() or _valid_utf8(text)):
            text = text.decode("utf-8", "replace").encode("utf-8")  # U+FFFD never holds a newline
            lens = array("q", map(len, text.split(b"\n")[:n]))
        body = text.replace(b"\n", b"")
        offsets = pa.concat_arrays([pa.array([0], pa.int64()), pc.cumulative_sum(_ints(pa.int64(), lens))])
        lines = pa.Array.from_buffers(pa.large_string(), n, [None, offsets.buffers()[1], pa.py_buffer(body)])
        if max(lens, default=0) <= LINE_MAX:  # bytes >= characters: nothing to cut
            return lines.cast(pa.string()), _flags(n)
        truncated = pc.greater(pc.utf8_length(lines), LINE_MAX)
        return pc.utf8_slice_codeunits(lines, 0, LINE_MAX).cast(pa.string()), truncated


def _valid_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _repeat(values: Sequence[int], counts: Sequence[int]) -> pa.Array:
    """values[0] counts[0] times, then values[1] counts[1] times, ... as int64, decoded by Arrow."""
    runs = [(v, c) for v, c in zip(values, counts, strict=True) if c]
    if not runs:
        return pa.array([], pa.int64())
    ends = pa.array(list(accumulate(c for _, c in runs)), pa.int64())
    return pc.run_end_decode(pa.RunEndEncodedArray.from_arrays(ends, pa.array([v for v, _ in runs], pa.int64())))


def _arange(n: int) -> pa.Array:
    """0, 1, ..., n-1 as int64."""
    if n == 0:
        return pa.array([], pa.int64())
    return pc.subtract(pc.cumulative_sum(_ints(pa.int64(), array("q", [1]) * n)), 1)


def _view(values: pa.Array) -> memoryview:
    """An int64 Arrow array's values as a memoryview of ints (bisect works on it, in C)."""
    assert values.type == pa.int64() and values.null_count == 0
    return memoryview(values.buffers()[1]).cast("q")[values.offset:values.offset + len(values)]


def _diff(before: list[int]) -> list[int]:
    return [b - a for a, b in pairwise(before)]


def _ints(kind: pa.DataType, values: array[int]) -> pa.Array:
    return pa.Array.from_buffers(kind, len(values), [None, pa.py_buffer(values)])


def _constant(value: str, n: int) -> pa.Array:
    """`value` n times, as a dictionary array (the Parquet writer keeps it as one dictionary page)."""
    return pa.DictionaryArray.from_arrays(pa.Array.from_buffers(pa.int8(), n, [None, pa.py_buffer(bytes(n))]),
                                          pa.array([value], pa.string()))


def _flags(n: int, last: bool = False) -> pa.Array:
    """n booleans, all false but (with `last`) the last one."""
    bits = bytearray((n + 7) // 8)
    if last and n:
        bits[(n - 1) // 8] |= 1 << ((n - 1) % 8)
    return pa.Array.from_buffers(pa.bool_(), n, [None, pa.py_buffer(bytes(bits))])
