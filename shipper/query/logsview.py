"""The `logs` view's rows, from the catalog (docs/format.md, "Catalog") instead of every manifest.

Per query: one LIST of the catalog's head/ (records, and the newest summary), the summary and the parts it
names (immutable: a Database keeps them), records whose key holds no row; every object read through the
query's own sandboxed DuckDB, so the view reads nothing outside the archive. Of each run the highest
(phase, version) row counts (views.logs_over_catalog). A bad object costs only its own rows: it is returned
with why, never a failed query.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

import duckdb
import pyarrow as pa  # type: ignore[import-untyped]

from shipper.catalog import parts, rows
from shipper.catalog.parts import BadPart, PartMeta
from shipper.catalog.rows import BadRow, Row
from shipper.format import names

CACHE_BYTES = 64 << 20  # decoded parts a Database keeps (as the API's catalog reader)
RECORDS_KEPT = 20_000  # parsed record keys a Database keeps
RECORD_PREFIX = names.CATALOG_HEAD + "r-"


class CatalogRows:
    """Reads every run's rows in force from one archive's catalog; thread-safe (queries run in threads)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._summary: tuple[str, list[PartMeta]] | None = None
        self._parts: OrderedDict[str, pa.Table] = OrderedDict()
        self._records: OrderedDict[str, Row] = OrderedDict()

    def table(self, cur: duckdb.DuckDBPyConnection) -> tuple[pa.Table, list[tuple[str, str]]]:
        """Every row in force (parts.READ_SCHEMA; several per run: the view keeps the winner), and the
        objects left out, with why."""
        bad: list[tuple[str, str]] = []
        listed = [f.removeprefix(self.root) for (f,) in cur.execute(
            "SELECT file FROM glob(?)", [self.root + names.CATALOG_HEAD + "*"]).fetchall()]
        records = [k for k in listed if names.parse_catalog_record_key(k) is not None]
        summaries = sorted(k for k in listed if names.parse_catalog_summary_key(k) is not None)  # newest first
        bad += [(k, "not a catalog key") for k in sorted(set(listed) - set(records) - set(summaries))]
        record_rows = parts.table_of(self._record_rows(cur, records, bad)).select(parts.READ_COLUMNS)
        tables = [record_rows.cast(parts.READ_SCHEMA), *self._part_tables(cur, summaries, bad)]
        return pa.concat_tables(tables), bad

    def _blobs(self, cur: duckdb.DuckDBPyConnection, keys: Sequence[str]) -> dict[str, bytes]:
        """The bytes of `keys`; one gone meanwhile (compacted, or an old summary deleted) is left out."""
        if not keys:
            return {}
        sql = "SELECT filename, content FROM read_blob(?)"
        try:
            got = cur.execute(sql, [[self.root + k for k in keys]]).fetchall()
        except duckdb.Error:  # one missing object fails the whole read on S3: each alone
            got = []
            for k in keys:
                try:
                    got += cur.execute(sql, [[self.root + k]]).fetchall()
                except duckdb.Error:
                    continue
        return {f.removeprefix(self.root): bytes(data) for f, data in got}

    def _record_rows(self, cur: duckdb.DuckDBPyConnection, keys: list[str],
                     bad: list[tuple[str, str]]) -> list[Row]:
        out: list[Row] = []
        need: list[str] = []
        for key in keys:
            with self._lock:
                row = self._records.get(key)
            if row is None:
                try:
                    row = rows.parse_name(key[len(RECORD_PREFIX):])
                except BadRow as exc:
                    bad.append((key, str(exc)))
                    continue
            if row is None:
                need.append(key)  # a long row: its fields are in the body
                continue
            out.append(row)
            self._keep(key, row)
        for key, data in self._blobs(cur, need).items():
            _, task, host = key[len(RECORD_PREFIX):].split("~")[:3]
            try:
                row = rows.from_body(data, task, host)
            except BadRow as exc:
                bad.append((key, str(exc)))
                continue
            out.append(row)
            self._keep(key, row)
        return out

    def _keep(self, key: str, row: Row) -> None:
        with self._lock:
            self._records[key] = row
            while len(self._records) > RECORDS_KEPT:
                self._records.popitem(last=False)

    def _part_tables(self, cur: duckdb.DuckDBPyConnection, summaries: list[str],
                     bad: list[tuple[str, str]]) -> list[pa.Table]:
        entries = self._summary_of(cur, summaries, bad)
        with self._lock:
            cached = {p.key: self._parts[p.key] for p in entries if p.key in self._parts}
        data = self._blobs(cur, [p.key for p in entries if p.key not in cached])
        out = []
        for p in entries:
            table = cached.get(p.key)
            if table is None:
                if p.key not in data:
                    bad.append((p.key, "named by the summary but gone: run `logship catalog rebuild`"))
                    continue
                try:
                    table = parts.decode_part(p.key, data[p.key])
                except BadPart as exc:
                    bad.append((p.key, str(exc)))
                    continue
                with self._lock:
                    self._parts[p.key] = table
                    while sum(t.nbytes for t in self._parts.values()) > CACHE_BYTES and len(self._parts) > 1:
                        self._parts.popitem(last=False)
            out.append(table)
        return out

    def _summary_of(self, cur: duckdb.DuckDBPyConnection, summaries: list[str],
                    bad: list[tuple[str, str]]) -> list[PartMeta]:
        """The parts in force per the newest readable summary (none yet: no parts)."""
        for key in summaries:
            with self._lock:
                if self._summary is not None and self._summary[0] == key:
                    return self._summary[1]
            data = self._blobs(cur, [key]).get(key)
            if data is None:
                continue  # deleted meanwhile (it was old): the next one is as good
            try:
                entries = parts.decode_summary(key, data)
            except BadPart as exc:
                bad.append((key, str(exc)))
                continue
            with self._lock:
                self._summary = (key, entries)
            return entries
        return []
