"""Catalog parts and summaries as Parquet: the columns plain DuckDB reads, the footer entry, the Bloom filter.

A part holds compacted rows of runs started on one UTC day, sorted in listing order, at most one row per
run. Its footer entry `logship.catalog` says what it replaces (`inputs`) and what it holds (row count,
start-time range, a Bloom filter of its tasks, hosts and labels), so a summary is made from footers alone.
A summary lists the parts in force with those facts; readers prune parts with them.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]

from shipper.format import names

from .rows import VIEW_FIELDS, Row

META_KEY = "logship.catalog"
FORMAT = 1
CODEC = "zstd"
# Rows per row group: a page decodes the row groups that may hold its rows (PartFile), so a newest-first
# page of 50 decodes ≈ 2,000 rows, not a whole day; smaller costs compression and footer size.
ROW_GROUP = 2048
FOOTER_GUESS = 256 << 10  # one ranged GET of a part's last bytes holds its footer (the Bloom filter is in it)
MAX_OBJECT = 256 << 20  # a part or summary larger than this is not one logship wrote
TS = pa.timestamp("us")  # UTC, as the `logs` view's TIMESTAMP columns (µs: DuckDB's TIMESTAMP)
SCHEMA = pa.schema([
    ("task", pa.string()), ("host", pa.string()), ("run_id", pa.string()), ("status", pa.string()),
    ("phase", pa.int8()), ("version_ns", pa.int64()), ("exit_code", pa.int64()),
    ("started_ns", pa.int64()), ("ended_ns", pa.int64()), ("started", TS), ("ended", TS),
    ("size", pa.int64()), ("lines", pa.int64()),
    ("labels", pa.map_(pa.string(), pa.string())), ("command", pa.list_(pa.string())),
    ("silent_since_ns", pa.int64()),
    ("signal", pa.int64()), ("segments", pa.int64()), ("dropped_bytes", pa.int64()),  # rows.VIEW_FIELDS
])
READ_COLUMNS = ["task", "host", "run_id", "status", "started_ns", "version_ns", "exit_code", "ended_ns", "size",
                "lines", "labels", "command", "silent_since_ns", *VIEW_FIELDS]
ADDED_COLUMNS = ("silent_since_ns", *VIEW_FIELDS)  # null in parts written before them (issues 13, 15)
READ_SCHEMA = pa.schema([SCHEMA.field(c) for c in READ_COLUMNS])
SUMMARY_SCHEMA = pa.schema([
    ("path", pa.string()), ("day", pa.string()), ("rows", pa.int64()), ("min_started_ns", pa.int64()),
    ("max_started_ns", pa.int64()), ("bloom", pa.binary()),
])


class BadPart(ValueError):
    """An object under catalog/v1/parts/ or a summary that is not one logship wrote."""


# --- Bloom filter ----------------------------------------------------------------------------------

BLOOM_BITS_PER_VALUE = 10  # ≈ 1 % false positives with 7 hashes
BLOOM_HASHES = 7


def _positions(value: str, bits: int) -> list[int]:
    d = hashlib.blake2b(value.encode(), digest_size=16).digest()
    h1, h2 = struct.unpack("<QQ", d)
    return [(h1 + i * h2) % bits for i in range(BLOOM_HASHES)]


def bloom(values: Iterable[str]) -> bytes:
    vals = set(values)
    size = max(64, (len(vals) * BLOOM_BITS_PER_VALUE + 7) // 8)
    out = bytearray(size)
    for v in vals:
        for p in _positions(v, size * 8):
            out[p >> 3] |= 1 << (p & 7)
    return bytes(out)


def may_hold(filter_: bytes, value: str) -> bool:
    if not filter_:
        return True  # no filter: anything may be there
    return all(filter_[p >> 3] & (1 << (p & 7)) for p in _positions(value, len(filter_) * 8))


def terms(row: Row) -> list[str]:
    """What a part's Bloom filter holds of a row: fields fixed for the whole run, so pruning never hides a
    newer row of a run than the one a reader sees (status changes, so it is not in it)."""
    return [f"t:{row.task}", f"h:{row.host}", *(f"l:{k}={v}" for k, v in row.labels.items())]


# --- parts ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PartMeta:
    key: str
    day: str
    created_ns: int
    inputs: tuple[str, ...]
    rows: int
    min_started_ns: int
    max_started_ns: int
    bloom: bytes


def table_of(rows: Sequence[Row]) -> pa.Table:
    ordered = sorted(rows, key=lambda r: r.order)
    cols: dict[str, list[Any]] = {f: [] for f in SCHEMA.names}
    for r in ordered:
        for f in ("task", "host", "run_id", "status", "version_ns", "exit_code", "started_ns", "ended_ns", "size",
                  "lines", "command", "silent_since_ns", *VIEW_FIELDS):
            cols[f].append(getattr(r, f))
        cols["phase"].append(r.phase)
        cols["started"].append(r.started_ns // 1000)
        cols["ended"].append(None if r.ended_ns is None else r.ended_ns // 1000)
        cols["labels"].append(list(r.labels.items()))
    return pa.Table.from_pydict(cols, schema=SCHEMA)


def encode_part(key: str, rows: Sequence[Row], inputs: Iterable[str]) -> bytes:
    parsed = names.parse_catalog_part_key(key)
    assert parsed is not None, key
    meta = {"format": FORMAT, "day": parsed[0], "created_ns": parsed[1], "inputs": sorted(inputs),
            "rows": len(rows), "min_started_ns": min((r.started_ns for r in rows), default=0),
            "max_started_ns": max((r.started_ns for r in rows), default=0),
            "bloom": base64.b64encode(bloom(t for r in rows for t in terms(r))).decode()}
    table = table_of(rows).replace_schema_metadata({META_KEY: json.dumps(meta)})
    sink = io.BytesIO()
    pq.write_table(table, sink, compression=CODEC, row_group_size=ROW_GROUP)
    return sink.getvalue()


def parse_meta(key: str, value: bytes) -> PartMeta:
    parsed = names.parse_catalog_part_key(key)
    if parsed is None:
        raise BadPart(f"{key} is not a catalog part key")
    try:
        m = json.loads(value)
        inputs = m["inputs"]
        if m["format"] != FORMAT or not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
            raise BadPart(f"{key}: unknown footer format or bad inputs")
        out = PartMeta(key, parsed[0], parsed[1], tuple(inputs), int(m["rows"]), int(m["min_started_ns"]),
                       int(m["max_started_ns"]), base64.b64decode(m["bloom"], validate=True))
    except (ValueError, KeyError, TypeError) as exc:
        raise BadPart(f"{key}: bad {META_KEY} footer entry ({exc.__class__.__name__})") from None
    return out


def meta_of_footer(key: str, tail: bytes, size: int) -> PartMeta | int:
    """The footer entry from the object's last bytes, or how many last bytes are needed when `tail` is short."""
    if len(tail) < 12 or tail[-4:] != b"PAR1":
        raise BadPart(f"{key} is not a Parquet file")
    footer = struct.unpack("<I", tail[-8:-4])[0] + 8
    if footer > len(tail):
        if footer > size or footer > MAX_OBJECT:
            raise BadPart(f"{key}: footer larger than the object")
        return int(footer)
    try:
        md = pq.read_metadata(io.BytesIO(b"PAR1" + tail[-footer:]))
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise BadPart(f"{key}: unreadable footer ({exc.__class__.__name__})") from None
    value = (md.metadata or {}).get(META_KEY.encode())
    if value is None:
        raise BadPart(f"{key} has no {META_KEY} footer entry")
    return parse_meta(key, value)


def decode_part(key: str, data: bytes) -> pa.Table:
    """A part's rows, in listing order. Raises BadPart."""
    return open_part(key, data).read()


class PartFile:
    """A part as its Parquet bytes, which is what a long-lived reader keeps (≈ 1/6 of its decoded rows), with
    each row group's start-time range (rows are in listing order, so a page's cursor and a since/until
    window select row groups): a page decodes only the row groups and columns it needs, and drops them."""

    def __init__(self, key: str, data: bytes) -> None:
        self.key, self.nbytes = key, len(data)
        try:
            self._file = pq.ParquetFile(pa.BufferReader(data), pre_buffer=False)  # in memory already
            md = self._file.metadata
            present = set(self._file.schema_arrow.names)
            leaf = next((i for i in range(md.num_columns) if md.schema.column(i).path == "started_ns"), None)
            self.starts: list[tuple[int, int] | None] = []
            self.sizes = [md.row_group(g).num_rows for g in range(md.num_row_groups)]
            for g in range(md.num_row_groups):
                stats = md.row_group(g).column(leaf).statistics if leaf is not None else None
                if stats is not None and stats.has_min_max and isinstance(stats.min, int):
                    self.starts.append((stats.min, stats.max))
                else:
                    self.starts.append(None)  # no range: always read
        except (OSError, ValueError, TypeError, pa.ArrowException) as exc:
            raise BadPart(f"{key}: unreadable Parquet ({exc.__class__.__name__})") from None
        missing = set(READ_COLUMNS) - present - set(ADDED_COLUMNS)
        if missing:
            raise BadPart(f"{key}: not the catalog's columns (no {', '.join(sorted(missing))})")
        self._added = [c for c in ADDED_COLUMNS if c not in present]

    def groups(self, low: int | None, high: int | None) -> list[int]:
        """Row groups that may hold rows started in [low, high] (None: unbounded)."""
        return [g for g, r in enumerate(self.starts) if r is None or (
            (low is None or r[1] >= low) and (high is None or r[0] <= high))]

    def read(self, groups: Sequence[int] | None = None, columns: Sequence[str] = READ_COLUMNS) -> pa.Table:
        """The rows of `groups` (None: all), `columns` of READ_SCHEMA, with their types. Raises BadPart."""
        try:
            have = [c for c in columns if c not in self._added]
            t = (self._file.read(columns=have, use_threads=False) if groups is None
                 else self._file.read_row_groups(groups, columns=have, use_threads=False))
            for c in columns:
                if c in self._added:  # a part written before the column: null
                    t = t.append_column(SCHEMA.field(c), pa.nulls(t.num_rows, SCHEMA.field(c).type))
            return t.select(list(columns)).cast(pa.schema([READ_SCHEMA.field(c) for c in columns]))
        except (KeyError, ValueError, OSError, pa.ArrowException) as exc:
            raise BadPart(f"{self.key}: not the catalog's columns ({exc.__class__.__name__})") from None


def open_part(key: str, data: bytes) -> PartFile:
    """Raises BadPart."""
    if len(data) > MAX_OBJECT:
        raise BadPart(f"{key}: larger than a part logship writes")
    return PartFile(key, data)


# --- summaries --------------------------------------------------------------------------------------


def encode_summary(listed_ns: int, parts: Sequence[PartMeta]) -> bytes:
    cols = {"path": [p.key for p in parts], "day": [p.day for p in parts], "rows": [p.rows for p in parts],
            "min_started_ns": [p.min_started_ns for p in parts], "max_started_ns": [p.max_started_ns for p in parts],
            "bloom": [p.bloom for p in parts]}
    table = pa.Table.from_pydict(cols, schema=SUMMARY_SCHEMA).replace_schema_metadata(
        {META_KEY: json.dumps({"format": FORMAT, "listed_ns": listed_ns})})
    sink = io.BytesIO()
    pq.write_table(table, sink, compression=CODEC)
    return sink.getvalue()


def decode_summary(key: str, data: bytes) -> list[PartMeta]:
    try:
        # Decoded in this thread. Not pq.read_table: its dataset scanner decodes on Arrow's pools, and a pool
        # thread that drops the last reference to `data` while the interpreter exits aborts the process
        # (tests/test_arrow_exit.py).
        t = pq.ParquetFile(pa.BufferReader(data), pre_buffer=False).read(use_threads=False)
        if not t.schema.remove_metadata().equals(SUMMARY_SCHEMA):
            raise BadPart(f"{key}: not a summary's columns")
        out = []
        for d in t.to_pylist():
            parsed = names.parse_catalog_part_key(d["path"])
            if parsed is None:
                raise BadPart(f"{key}: names {d['path']!r}, not a part")
            out.append(PartMeta(d["path"], parsed[0], parsed[1], (), d["rows"], d["min_started_ns"],
                                d["max_started_ns"], d["bloom"] or b""))
        return out
    except (OSError, ValueError, TypeError, pa.ArrowException) as exc:
        if isinstance(exc, BadPart):
            raise
        raise BadPart(f"{key}: unreadable summary ({exc.__class__.__name__})") from None
