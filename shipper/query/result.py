"""A running query's answer: its columns, then its rows streamed from DuckDB as text or JSON objects."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import duckdb
from duckdb.sqltypes import DuckDBPyType

from .rules import Limits, translate
from .sql import ident, literal

FETCH_ROWS = 2048  # rows per fetch at most: one round trip to the DuckDB thread per this many rows
# Rows are fetched in batches of about this many bytes (as DuckDB rendered them): what Python holds of
# an answer at a time, whatever the format. DuckDB renders every format with to_json, whose memory
# counts against query.memory_bytes, so a batch DuckDB could not render is refused in every format.
PIECE_BYTES = 1 << 20


@dataclass
class Result:
    """A running query: its columns, then rows as text (fetch_text) or JSON objects (fetch_json).

    Rows stream from DuckDB, rendered by it as JSON (to_json, whose memory counts against
    query.memory_bytes) in batches of about PIECE_BYTES: every format holds the same bounded amount."""

    cursor: duckdb.DuckDBPyConnection
    limits: Limits
    redact: tuple[str, ...] = ()
    columns: list[str] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    rows: int = 0
    truncated: bool = False
    timed_out: bool = False
    skipped: list[tuple[str, str]] = field(default_factory=list)  # catalog objects left out of `logs`, and why
    started: float = field(default_factory=time.monotonic)
    _timer: threading.Timer | None = None
    _text: str = ""
    _json: str = ""

    def arm(self) -> None:
        """Start the clock of query.timeout_seconds."""
        self._timer = threading.Timer(self.limits.timeout_s, self._interrupt)
        self._timer.daemon = True
        self._timer.start()

    def start(self, rel: duckdb.DuckDBPyRelation, source: str) -> None:
        """Prepare the two renderings of `rel`'s rows, which `source` (SQL) gives again. They are bound
        from SQL text only when fetched: DuckDB binds SQL text off the GIL, but a relation's project()
        binds the whole query again while holding it (≈ 0.7 s for a long chain of ORs)."""
        limit = self.limits.max_rows + 1  # one more than allowed tells that the answer was cut
        n = len(self.columns)
        # Columns by position (#i), never by name: any name works, duplicates included (DuckDB's query()
        # has already made them unique: a, a_1).
        text = "to_json([" + ", ".join(f"CAST(#{i} AS VARCHAR)" for i in range(1, n + 1)) + "])"
        values = [_json_value(f"#{i}", t) for i, t in enumerate(rel.types, 1)]
        fields = ", ".join(f"{ident(c)} := {v}" for c, v in zip(self.columns, values, strict=True))
        obj = "to_json(struct_pack(" + fields + "))"
        self._text, self._json = (f"SELECT CAST({x} AS VARCHAR) FROM {source} LIMIT {limit}" for x in (text, obj))

    def _interrupt(self) -> None:
        self.timed_out = True
        self.interrupt()

    def interrupt(self) -> None:
        """Stop the running query (from any thread)."""
        with contextlib.suppress(duckdb.Error):  # already closed
            self.cursor.interrupt()

    def fetch_text(self) -> Iterator[list[list[str | None]]]:
        """Batches of rows, each value as text (None for NULL)."""
        for batch in self._fetch(self._text):
            yield json.loads("[" + ",".join(batch) + "]")  # one parse per batch, in C

    def fetch_json(self) -> Iterator[list[str]]:
        """Batches of rows, each a JSON object keyed by column name."""
        return self._fetch(self._json)

    def _fetch(self, sql: str) -> Iterator[list[str]]:
        """Batches of rendered rows of about PIECE_BYTES: the batch size follows the rows' sizes."""
        want = 64  # the first batch is small: its rows tell how many make PIECE_BYTES
        try:
            rel = self.cursor.sql(sql)
            while self.rows < self.limits.max_rows:
                batch = [r[0] for r in rel.fetchmany(min(want, self.limits.max_rows + 1 - self.rows))]
                if not batch:
                    return
                if self.rows + len(batch) > self.limits.max_rows:
                    self.truncated = True
                    batch = batch[:self.limits.max_rows - self.rows]
                self.rows += len(batch)
                size = sum(map(len, batch))
                want = max(1, min(FETCH_ROWS, PIECE_BYTES * len(batch) // max(size, 1)))
                yield batch
        except duckdb.Error as exc:
            raise translate(exc, self.limits, self.timed_out, self.redact) from exc
        finally:
            self.close()

    @property
    def elapsed_ms(self) -> int:
        return int((time.monotonic() - self.started) * 1000)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        with contextlib.suppress(duckdb.Error):
            self.cursor.close()


_FLOATS = frozenset({"float", "double"})


def _children(t: DuckDBPyType) -> list[tuple[str, DuckDBPyType]]:
    """The member types of a nested type (a list's element, a struct's fields, a map's key and value)."""
    if t.id not in ("list", "array", "struct", "map", "union"):
        return []
    return [(n, c) for n, c in t.children if isinstance(c, DuckDBPyType)]


def _has_float(t: DuckDBPyType) -> bool:
    return t.id in _FLOATS or any(_has_float(c) for _, c in _children(t))


def _json_value(x: str, t: DuckDBPyType, depth: int = 0) -> str:
    """`x` of type `t` as something to_json writes as valid JSON: infinite and NaN floats, at any depth
    (lists, arrays, structs, map values), become the strings "inf", "-inf", "nan" (to_json would write
    the bare words Infinity and NaN, which are not JSON). Types without floats are `x` itself."""
    if not _has_float(t):
        return x
    if t.id in _FLOATS:
        return f"CASE WHEN isfinite({x}) OR {x} IS NULL THEN to_json({x}) ELSE to_json(CAST({x} AS VARCHAR)) END"
    v = f"logship_v{depth}_"
    if t.id in ("list", "array"):
        return f"list_transform({x}, {v} -> {_json_value(v, _children(t)[0][1], depth + 1)})"
    if t.id == "struct":
        fields = ", ".join(f"{ident(n)} := {_json_value(f'struct_extract({x}, {literal(n)})', c, depth)}"
                           for n, c in _children(t))
        return f"CASE WHEN {x} IS NULL THEN NULL ELSE struct_pack({fields}) END"
    if t.id == "map":
        value = _json_value(f"{v}.value", _children(t)[1][1], depth + 1)
        return f"map_from_entries(list_transform(map_entries({x}), {v} -> {{'key': {v}.key, 'value': {value}}}))"
    return f"to_json(CAST({x} AS VARCHAR))"  # a union holding a float: its text
