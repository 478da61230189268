"""SQL over the archive: a sandboxed DuckDB with the `lines` and `logs` views (docs/query.md).

The CLI (`logship query`, `logship grep`) and the API (POST /api/v1/query, GET /api/v1/search) both
run queries through `Database`: one SELECT at a time, read-only, within time, row and memory limits.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
from duckdb.sqltypes import DuckDBPyType

from shipper.config import Config, QueryConfig, StoreConfig
from shipper.errors import ConfigError, LogshipError, StoreUnavailable
from shipper.format import names
from shipper.format.manifest import DELETING, VERSION
from shipper.query import lineset

log = logging.getLogger("logship.query")
FETCH_ROWS = 2048  # rows per fetch at most: one round trip to the DuckDB thread per this many rows
# Rows are fetched in batches of about this many bytes (as DuckDB rendered them): what Python holds of
# an answer at a time, whatever the format. DuckDB renders every format with to_json, whose memory
# counts against query.memory_bytes, so a batch DuckDB could not render is refused in every format.
PIECE_BYTES = 1 << 20
# SQL text longer than this is refused before it is parsed: DuckDB parses some shapes in quadratic
# time (a chain of 16,000 ORs, 80 KB, takes ≈ 0.5-0.8 s here; 800 KB over a minute). Parsing runs in
# DuckDB's own threads, off the event loop and the GIL, under query.timeout_seconds (docs/query.md).
MAX_SQL_BYTES = 64 << 10
# Functions a query may not call: duckdb_secrets() shows the store's key id, and query() and
# json_execute_serialized_sql() run SQL built from strings, which the check of the text cannot see.
DENIED_FUNCTIONS = frozenset({"duckdb_secrets", "which_secret", "query", "json_execute_serialized_sql"})
# Settings httpfs fills from AWS_* variables when it loads; DuckDB shows settings to any query.
_CREDENTIAL_SETTINGS = ("s3_access_key_id", "s3_secret_access_key", "s3_session_token")
_VAR_SQL = "logship_sql_"  # the query's text, parsed by DuckDB's query() (off the GIL)
# A segment's first chunk starts its date partition, and a segment is sealed at most
# spool.segment_seconds (≤ 7 days by config) after it: a line of time T lies in a partition dated
# at most this long before T. Searches by time widen their date filter by this much.
MAX_SEGMENT_SPAN_S = 7 * 86400

# DuckDB reads a JSON object whole, in a buffer twice this size: 32 MiB holds the manifest of a log
# of ~100k segments (1.6 TB at 16 MiB segments) and keeps the buffer well within query.memory_bytes.
MANIFEST_MAX = 32 << 20
_LINES_COLS = ", ".join(name for name, _ in names.LINES_COLUMNS)
# One row per log, from the manifests: what `logs` shows, with the manifest's JSON types.
_MANIFEST_FIELDS = (("version", "INTEGER"), ("task", "VARCHAR"), ("host", "VARCHAR"), ("run_id", "VARCHAR"),
                    ("status", "VARCHAR"), ("exit_code", "INTEGER"), ("signal", "INTEGER"), ("started_ns", "BIGINT"),
                    ("ended_ns", "BIGINT"), ("size", "BIGINT"), ("lines", "BIGINT"),
                    ("labels", "MAP(VARCHAR, VARCHAR)"), ("command", "VARCHAR[]"), ("dropped_bytes", "BIGINT"),
                    ("updated_ns", "BIGINT"), ("segments", "JSON[]"))
_LOGS_COLS = ("task, host, status, exit_code, signal, started, ended, size, lines, labels, command, run_id, "
              "segments, dropped_bytes, updated")
_MANIFESTS_TABLE = "logship_manifests_"  # a query's manifests, parsed (Database._read_manifests)
_NO_LINES = ("SELECT " + ", ".join(f"NULL::{sql} AS {name}" for name, sql in names.LINES_COLUMNS)
             + ", NULL::DATE AS date WHERE false")
# `lines` is the query copies (one object per segment, lines/) and the compacted parts (compact/), less
# what a compacted part replaces and the logs gc is deleting; the lists come from shipper.query.lineset, set
# per query as variables (Database.snapshot). Filters on `filename`, `task` and `host` select whole objects.
_COPIES, _PARTS = "logship_copies_", "logship_parts_"
_VAR_HIDDEN, _VAR_PARTS, _VAR_GONE = "logship_hidden", "logship_parts", "logship_gone"
_NOT_GONE = f"NOT list_contains(coalesce(getvariable('{_VAR_GONE}'), []::VARCHAR[]), task || '/' || host)"
_EMPTY = {  # the views of an archive that holds no such objects yet: no rows, the same columns
    _COPIES: _NO_LINES,
    _PARTS: _NO_LINES,
    "logs": "SELECT NULL::VARCHAR AS task, NULL::VARCHAR AS host, NULL::VARCHAR AS status, NULL::INTEGER AS exit_code, "
            "NULL::INTEGER AS signal, NULL::TIMESTAMP AS started, NULL::TIMESTAMP AS ended, NULL::BIGINT AS size, "
            "NULL::BIGINT AS lines, NULL::MAP(VARCHAR, VARCHAR) AS labels, NULL::VARCHAR[] AS command, "
            "NULL::VARCHAR AS run_id, NULL::BIGINT AS segments, NULL::BIGINT AS dropped_bytes, "
            "NULL::TIMESTAMP AS updated WHERE false",
}
_HINT_SELECT = "send one SELECT over the views lines and logs (see docs/query.md)"
REPORT_EVERY_S = 600.0  # a bad manifest is logged again after this long


class QueryError(LogshipError):
    """The query cannot run as given (HTTP 400)."""

    code = "bad_query"


class NotAllowed(QueryError):
    """The query tries something the sandbox refuses: another statement than SELECT, or data outside the archive."""

    code = "not_allowed"


class QueryTimeout(QueryError):
    code = "query_timeout"


class QueryTooLarge(QueryError):
    code = "query_too_large"


class SqlTooLong(QueryError):
    """The SQL text itself is over MAX_SQL_BYTES (HTTP 413)."""

    code = "sql_too_large"
    status = 413


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 30.0
    max_rows: int = 10_000
    memory_bytes: int = 512 << 20
    threads: int = 2

    @classmethod
    def of(cls, q: QueryConfig) -> Limits:
        return cls(q.timeout_seconds, q.max_rows, q.memory_bytes, q.threads)


def archive_root(store: StoreConfig) -> str:
    """The store's root as DuckDB names it: `s3://BUCKET/PREFIX/` or an absolute directory with a `/`."""
    if store.url.startswith("s3://"):
        bucket, _, prefix = store.url[len("s3://"):].partition("/")
        prefix = prefix.strip("/")
        return f"s3://{bucket}/{prefix}/" if prefix else f"s3://{bucket}/"
    if store.url.startswith("file://"):
        # as the file store resolves it (shipper/store/fs.py): relative to the working directory
        return str(Path(store.url.removeprefix("file://")).absolute()) + "/"
    raise ConfigError(f"store.url = {store.url!r} is not supported", "use s3://BUCKET/PREFIX or file:///PATH")


def _literal(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


class Database:
    """One sandboxed in-memory DuckDB over the archive. Thread-safe: each query runs on its own cursor."""

    def __init__(self, cfg: Config, limits: Limits | None = None) -> None:
        self.limits = limits or Limits.of(cfg.query)
        self.root = archive_root(cfg.store)
        self._con = duckdb.connect(":memory:")
        self._lock = threading.Lock()
        self._empty: set[str] = set()
        # Credentials this process knows: DuckDB must show none of them to a query, not even in an error.
        self._credentials = _credentials(cfg.store)
        self.bad_manifests = 0  # manifests left out of `logs` as invalid, counted each time a query met one
        self._reported: dict[str, float] = {}  # manifest key -> when it was last logged
        try:
            self._setup(cfg.store)
        except BaseException:
            self._con.close()
            raise

    def _setup(self, store: StoreConfig) -> None:
        con = self._con
        # no secrets but ours: none saved under ~/.duckdb by other programs
        con.execute("SET allow_persistent_secrets = false")
        if self.root.startswith("s3://"):
            _load_httpfs(con)
            con.execute(_secret_sql(store, self.root))
            # httpfs copies AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN into settings when
            # it loads, and any query may read settings (current_setting, duckdb_settings): the secret above
            # is what signs requests, so the settings go back to their empty defaults.
            for name in _CREDENTIAL_SETTINGS:
                con.execute(f"RESET GLOBAL {name}")
        self._no_credential_in_settings(con)
        con.execute("SET autoinstall_known_extensions = false")
        con.execute("SET autoload_known_extensions = false")
        con.execute("SET GLOBAL TimeZone = 'UTC'")  # naive TIMESTAMPs (ts, started, ...) are UTC
        con.execute(f"SET threads = {int(self.limits.threads)}")
        con.execute(f"SET memory_limit = '{int(self.limits.memory_bytes)}B'")
        # No spilling: a query over the memory limit fails instead of writing to disk (and the
        # temp directory would otherwise be readable by queries).
        con.execute("SET temp_directory = ''")
        # Objects under lines/ never change (deterministic keys), so their footers may be cached.
        con.execute("SET GLOBAL parquet_metadata_cache = true")
        # The sandbox (DESIGN §8): only the archive is readable, then nothing can change that.
        con.execute(f"SET allowed_directories = [{_literal(self.root)}]")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        self._views((_COPIES, _PARTS, "logs"))
        with self._con.cursor() as cur:
            cur.execute(f"CREATE OR REPLACE VIEW lines AS SELECT * FROM {_COPIES} UNION ALL SELECT * FROM {_PARTS}")
        self._parts: dict[str, lineset.Part] = {}  # footers of compacted parts read so far (they never change)
        self._parts_lock = threading.Lock()

    def _no_credential_in_settings(self, con: duckdb.DuckDBPyConnection) -> None:
        """Refuse to open if any setting still holds a credential (a new httpfs could add settings)."""
        if not self._credentials:
            return
        values = con.execute("SELECT name, value FROM duckdb_settings()").fetchall()
        leaked = sorted(name for name, value in values if value and self._redact(str(value)) != str(value))
        if leaked:
            raise ConfigError(f"DuckDB shows the store's credentials in the settings {', '.join(leaked)}",
                              "this DuckDB or httpfs version is not supported for SQL (see docs/query.md)")

    def _redact(self, text: str) -> str:
        for secret in self._credentials:
            text = text.replace(secret, "[redacted]")
        return text

    def _views(self, which: tuple[str, ...] | set[str]) -> None:
        """(Re)create views; a view over objects the archive does not hold yet has no rows until it does."""
        sources = {
            _COPIES: f"SELECT {_LINES_COLS}, date FROM read_parquet("
                     f"{_literal(self.root + names.LINES_GLOB)}, hive_partitioning = true, "
                     "hive_types = {'date': DATE, 'task': VARCHAR, 'host': VARCHAR}, filename = true) "
                     f"WHERE NOT list_contains(coalesce(getvariable('{_VAR_HIDDEN}'), []::VARCHAR[]), filename) "
                     f"AND filename <> {_literal(self.root + names.LINES_PLACEHOLDER)} AND {_NOT_GONE}",
            _PARTS: f"SELECT {_LINES_COLS}, date FROM read_parquet("
                    f"{_literal(self.root + names.COMPACT_GLOB)}, hive_partitioning = true, "
                    "hive_types = {'date': DATE}, filename = true) "
                    f"WHERE list_contains(coalesce(getvariable('{_VAR_PARTS}'), []::VARCHAR[]), filename) "
                    f"AND {_NOT_GONE}",
            # the whole view, for queries that name it in a way the check does not see (query_table)
            "logs": f"SELECT {_LOGS_COLS} FROM ({_manifests_sql(self.root)}) WHERE problem IS NULL "
                    f"AND status IS DISTINCT FROM {_literal(DELETING)}",
        }
        with self._con.cursor() as cur:  # the shared connection itself only makes cursors
            for name in which:
                try:
                    cur.execute(f"CREATE OR REPLACE VIEW {name} AS {sources[name]}")
                    self._empty.discard(name)
                except duckdb.IOException as exc:
                    if "No files found" not in str(exc):
                        raise self._translate(exc, self.limits) from exc
                    cur.execute(f"CREATE OR REPLACE VIEW {name} AS {_EMPTY[name]}")
                    self._empty.add(name)

    def close(self) -> None:
        self._con.close()

    # --- which objects make up `lines` (shipper/query/lineset.py) ------------------------------------------

    def snapshot(self, cur: duckdb.DuckDBPyConnection) -> lineset.Snapshot:
        """List compacted parts and gc's markers, and set on `cur` what its queries of `lines` read.

        One listing per query: a query reads the parts, originals and logs of one moment, and what
        compaction or gc replace later stays readable for query.grace_seconds (docs/query.md).
        """
        glob = "SELECT file FROM glob(?)"
        listed = [r[0] for r in cur.execute(glob, [self.root + names.COMPACT_ALL_GLOB]).fetchall()]
        marks = [r[0] for r in cur.execute(glob, [self.root + names.DELETING_GLOB]).fetchall()]
        keys = [f.removeprefix(self.root) for f in listed]
        new = [self.root + k for k in keys if names.parse_compact_key(k) and k not in self._parts]
        if new:
            rows = cur.execute("SELECT file_name, value FROM parquet_kv_metadata(?) WHERE key = ?",
                               [new, lineset.META_KEY]).fetchall()
            for file, value in rows:
                key = file.removeprefix(self.root)
                try:
                    part = lineset.parse_meta(key, 0, value)
                except ValueError:
                    continue  # not one of ours: never read
                with self._parts_lock:
                    self._parts[key] = part
        listed_set = set(keys)
        with self._parts_lock:
            for k in [k for k in self._parts if k not in listed_set]:
                del self._parts[k]  # deleted parts: forget them
            parts = list(self._parts.values())
        done = {k.removesuffix(names.DONE_SUFFIX) for k in keys if k.endswith(names.DONE_SUFFIX)}
        gone = {lineset.log_id(*m) for f in marks if (m := names.parse_deleting_key(f.removeprefix(self.root)))}
        snap = lineset.resolve(parts, done, gone)
        for var, values in ((_VAR_HIDDEN, [self.root + k for k in sorted(snap.hidden)]),
                            (_VAR_PARTS, [self.root + p.key for p in snap.shown]), (_VAR_GONE, sorted(gone))):
            cur.execute(f"SET VARIABLE {var} = [{', '.join(map(_literal, values))}]::VARCHAR[]")
        return snap

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor whose queries see the archive as it is now (see snapshot)."""
        cur = self._con.cursor()
        try:
            self._refresh(cur)
        except duckdb.Error as exc:
            cur.close()
            raise self._translate(exc, self.limits) from exc
        except BaseException:
            cur.close()
            raise
        return cur

    def _refresh(self, cur: duckdb.DuckDBPyConnection) -> None:
        snap = self.snapshot(cur)
        # A view made while the archive had no such objects must now see those the snapshot names
        # (compact/ never empties once it has a part: a part is only ever replaced by another).
        if self._empty and (snap.shown or _COPIES in self._empty):
            with self._lock:
                self._views(set(self._empty))

    # --- checking a query --------------------------------------------------------------------

    def check(self, sql: str) -> None:
        """Raise QueryError (or NotAllowed) unless `sql` is exactly one SELECT the sandbox allows."""
        check_text(sql)
        with self._con.cursor() as cur:
            try:
                self._parse(cur, sql)
            except duckdb.Error as exc:
                raise self._translate(exc, self.limits) from exc

    def _parse(self, cur: duckdb.DuckDBPyConnection, sql: str) -> _Parsed:
        """Parse `sql` in DuckDB (json_serialize_sql runs as a query: off the GIL, and interruptible)."""
        text = cur.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()[0]  # type: ignore[index]
        doc = json.loads(text)
        if doc.get("error"):
            if doc.get("error_type") == "not implemented":  # "Only SELECT statements can be serialized"
                raise _not_select(cur, sql)
            raise QueryError(f"Parser Error: {doc.get('error_message', 'the SQL does not parse')}", _HINT_SELECT)
        if len(doc["statements"]) != 1:
            raise NotAllowed(f"{len(doc['statements'])} statements given; one SELECT is allowed", _HINT_SELECT)
        # In DuckDB's JSON of the parse tree a key is always a bare "key": the same bytes in a string
        # the query holds are escaped (\"), so these find only names the query calls or reads.
        called = {n.lower() for n in re.findall(r'"function_name":"((?:[^"\\]|\\.)*)"', text)}
        denied = sorted(called & DENIED_FUNCTIONS)
        if denied:
            raise NotAllowed(f"the function {denied[0]}() is not allowed here",
                             "queries read the views lines and logs; functions that show secrets or run SQL "
                             f"built from strings are refused: {', '.join(sorted(DENIED_FUNCTIONS))}")
        reads_logs = re.search(r'"table_name":"logs"', text, re.IGNORECASE) is not None
        return _Parsed(reads_logs)

    # --- running a query ---------------------------------------------------------------------

    def execute(self, sql: str, limits: Limits | None = None) -> Result:
        """Start a query (in the calling thread: call it off the event loop). Raises QueryError and its kinds.

        Everything counts against query.timeout_seconds: parsing, listing the archive, binding, and
        every row until the answer is read (a slow reader is cut off too)."""
        limits = limits or self.limits
        check_text(sql)
        if "logs" in self._empty:
            with self._lock:
                self._views({"logs"})  # the archive may have got its first objects meanwhile
        try:
            return self._execute(sql, limits)
        except StoreUnavailable as exc:
            if "No files found" not in str(exc):
                raise
            with self._lock:  # gc deleted the last objects of a view: it is empty again
                self._views((_COPIES, _PARTS, "logs"))
            return self._execute(sql, limits)

    def _execute(self, sql: str, limits: Limits) -> Result:
        result = Result(self._con.cursor(), limits, redact=self._credentials)
        cur = result.cursor
        try:
            result.arm()
            parsed = self._parse(cur, sql)
            self._refresh(cur)
            if parsed.reads_logs:
                result.skipped = self._read_manifests(cur)
            # DuckDB parses the text again inside query(), in its own thread: off the GIL, so a long
            # parse holds neither the event loop nor other threads (cur.sql(sql) would hold the GIL).
            cur.execute(f"SET VARIABLE {_VAR_SQL} = ?", [sql])
            source = f"query(getvariable('{_VAR_SQL}'))"
            rel = cur.sql(f"SELECT * FROM {source}")
            result.columns = list(rel.columns)
            result.types = [str(t) for t in rel.types]
            result.start(rel, source)
        except duckdb.Error as exc:
            result.close()
            raise self._translate(exc, limits, result.timed_out) from exc
        except BaseException:
            result.close()
            raise
        return result

    def _read_manifests(self, cur: duckdb.DuckDBPyConnection) -> list[tuple[str, str]]:
        """Read the manifests once for this query (into a temporary table that its `logs` view reads) and
        report the ones left out: a log line per key (at most every REPORT_EVERY_S) and a count."""
        try:
            cur.execute(f"CREATE OR REPLACE TEMP TABLE {_MANIFESTS_TABLE} AS {_manifests_sql(self.root)}")
        except duckdb.IOException as exc:
            if "No files found" not in str(exc):
                raise
            cur.execute(f"CREATE OR REPLACE TEMP VIEW logs AS {_EMPTY['logs']}")
            return []
        cur.execute(f"CREATE OR REPLACE TEMP VIEW logs AS SELECT {_LOGS_COLS} FROM {_MANIFESTS_TABLE} "
                    f"WHERE problem IS NULL AND status IS DISTINCT FROM {_literal(DELETING)}")
        bad = cur.execute(f"SELECT filename, problem FROM {_MANIFESTS_TABLE} WHERE problem IS NOT NULL "
                          "ORDER BY filename").fetchall()
        now = time.monotonic()
        skipped = []
        for filename, problem in bad:
            key = filename.removeprefix(self.root)
            skipped.append((key, problem))
            with self._lock:
                self.bad_manifests += 1
                last = self._reported.get(key)
                if last is not None and now - last < REPORT_EVERY_S:
                    continue
                self._reported[key] = now
            log.warning("manifest %s left out of the logs view: %s", key, problem)
        return skipped

    def _translate(self, exc: duckdb.Error, limits: Limits, timed_out: bool = False) -> LogshipError:
        return _translate(exc, limits, timed_out, self._credentials, self.root)


@dataclass(frozen=True)
class _Parsed:
    reads_logs: bool  # the query names a table `logs`: its manifests are read and checked first


def check_text(sql: object) -> None:
    """The checks of the SQL text alone (cheap: fine on the event loop)."""
    if not isinstance(sql, str) or not sql.strip():
        raise QueryError("no SQL given", _HINT_SELECT)
    if "\x00" in sql:
        raise QueryError(f"the SQL holds a NUL character (at character {sql.index(chr(0))}); DuckDB would "
                         "ignore everything after it", "remove it; to match a NUL in text write chr(0)")
    size = len(sql.encode("utf-8", "surrogatepass"))
    if size > MAX_SQL_BYTES:
        raise SqlTooLong(f"the SQL is {size} bytes; at most {MAX_SQL_BYTES} are taken",
                         "shorten it: filter on task, host and date, or use a shorter list (IN, regexp) "
                         "instead of a long chain of ORs")


def _not_select(cur: duckdb.DuckDBPyConnection, sql: str) -> QueryError:
    """The refusal of a text that holds something else than SELECT statements, naming what it holds.
    extract_statements parses under the GIL: only short texts (the usual COPY, ATTACH, SET) get named."""
    if len(sql) > 4096:
        return NotAllowed("the SQL is not one SELECT statement", _HINT_SELECT)
    statements = cur.extract_statements(sql)
    if len(statements) != 1:
        return NotAllowed(f"{len(statements)} statements given; one SELECT is allowed", _HINT_SELECT)
    kind = statements[0].type.name  # COPY, ATTACH, LOAD (INSTALL too), SET, CREATE, ...
    what = "INSTALL and LOAD" if kind == "LOAD" else kind.replace("_", " ")
    if kind == "SELECT":  # a SELECT DuckDB cannot serialize, e.g. PIVOT: the check cannot see into it
        return NotAllowed("this kind of SELECT (PIVOT, ...) cannot be checked, so it is not allowed",
                          "write it with the PIVOT inside FROM: SELECT * FROM (... PIVOT ...), or use GROUP BY")
    return NotAllowed(f"{what} statements are not allowed: queries are read-only",
                      "only SELECT over the views lines and logs runs here; COPY, ATTACH, INSTALL, LOAD, "
                      "SET, PRAGMA, CREATE and other statements are refused")


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
    skipped: list[tuple[str, str]] = field(default_factory=list)  # manifests left out of `logs`, and why
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
        fields = ", ".join(f"{_ident(c)} := {v}" for c, v in zip(self.columns, values, strict=True))
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
            raise _translate(exc, self.limits, self.timed_out, self.redact) from exc
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


def _load_httpfs(con: duckdb.DuckDBPyConnection) -> None:
    """httpfs from the PyPI package duckdb-ext-httpfs (DESIGN §8): nothing is downloaded at run time."""
    try:
        import duckdb_ext
    except ImportError as exc:
        raise ConfigError("SQL over an S3 store needs the duckdb-ext packages",
                          "pip install duckdb-ext duckdb-ext-httpfs (they come with logship)") from exc
    duckdb_ext.init(con)
    con.execute("LOAD httpfs")


def _credentials(store: StoreConfig) -> tuple[str, ...]:
    """Every credential value this process may hand DuckDB or that httpfs may pick up by itself."""
    values = (store.access_key, store.secret_key, os.environ.get("AWS_ACCESS_KEY_ID"),
              os.environ.get("AWS_SECRET_ACCESS_KEY"), os.environ.get("AWS_SESSION_TOKEN"),
              os.environ.get("AWS_SECURITY_TOKEN"))
    # longest first, so that a value inside another is redacted with it; very short ones would redact noise
    return tuple(sorted({v for v in values if v and len(v) >= 4}, key=len, reverse=True))


def _secret_sql(store: StoreConfig, root: str) -> str:
    """CREATE SECRET for the store: DuckDB shows it redacted, unlike SET s3_secret_access_key (DESIGN §8)."""
    key = store.access_key or os.environ.get("AWS_ACCESS_KEY_ID", "")
    secret = store.secret_key or os.environ.get("AWS_SECRET_ACCESS_KEY", "")
    if not key or not secret:
        raise ConfigError("SQL over an S3 store needs S3 credentials",
                          "set store.access_key and store.secret_key (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)")
    opts = [f"KEY_ID {_literal(key)}", f"SECRET {_literal(secret)}", f"REGION {_literal(store.region)}",
            f"SCOPE {_literal(root)}"]
    if token := os.environ.get("AWS_SESSION_TOKEN"):
        opts.append(f"SESSION_TOKEN {_literal(token)}")
    if store.endpoint:
        m = re.fullmatch(r"(https?)://([^/]+)/?", store.endpoint)
        if not m:
            raise ConfigError(f"store.endpoint = {store.endpoint!r} is not a URL", "write it like http://127.0.0.1:8333")
        opts += [f"ENDPOINT {_literal(m.group(2))}", "URL_STYLE 'path'",
                 f"USE_SSL {str(m.group(1) == 'https').lower()}"]
    return f"CREATE OR REPLACE SECRET logship_store (TYPE s3, {', '.join(opts)})"


def _manifests_sql(root: str) -> str:
    """One row per object named manifest.json under logs/: the columns of `logs`, its key, and `problem`:
    NULL for a good manifest, else why it is left out. The store is untrusted: any object, any bytes, must
    cost only its own row (docs/query.md). DuckDB reads each object whole (read_text), and an object it
    cannot hold (over query.memory_bytes) still fails the query."""
    fields = dict(_MANIFEST_FIELDS)
    wrong = " ".join(f"WHEN coalesce(json_type(doc, '$.{n}') <> 'NULL', false) AND m.{n} IS NULL "
                     f"THEN 'its {n} is not {t.lower()}'" for n, t in _MANIFEST_FIELDS)
    valid = f"size <= {MANIFEST_MAX} AND json_valid(content)"
    return (
        "SELECT filename, CASE "
        f"WHEN size > {MANIFEST_MAX} THEN 'it is larger than {MANIFEST_MAX >> 20} MiB' "
        "WHEN NOT valid THEN 'it is not JSON' WHEN doc IS NULL THEN 'it is not a JSON object' "
        "WHEN m IS NULL THEN 'its fields do not parse' "
        f"WHEN m.version IS DISTINCT FROM {VERSION} THEN 'it is not of version {VERSION}' "
        "WHEN m.task IS DISTINCT FROM split_part(filename, '/', -3) "
        "OR m.host IS DISTINCT FROM split_part(filename, '/', -2) THEN 'its task and host are not those of its key' "
        f"{wrong} END AS problem, "
        "m.task AS task, m.host AS host, m.status AS status, m.exit_code AS exit_code, m.signal AS signal, "
        "make_timestamp(m.started_ns // 1000) AS started, make_timestamp(m.ended_ns // 1000) AS ended, "
        "m.size AS size, m.lines AS lines, m.labels AS labels, m.command AS command, m.run_id AS run_id, "
        "len(m.segments) AS segments, m.dropped_bytes AS dropped_bytes, "
        "make_timestamp(m.updated_ns // 1000) AS updated "
        f"FROM (SELECT filename, size, valid, doc, try(from_json(doc, {_literal(json.dumps(fields))})) AS m "
        f"FROM (SELECT filename, size, {valid} AS valid, CASE WHEN {valid} THEN "
        "CASE WHEN json_type(content) = 'OBJECT' THEN content END END AS doc "
        f"FROM read_text({_literal(root + names.MANIFESTS_GLOB)})))"
    )


def _translate(exc: duckdb.Error, limits: Limits, timed_out: bool = False, redact: tuple[str, ...] = (),
               root: str = "") -> LogshipError:
    """DuckDB's errors as the project's own, each with what is wrong and what to do. No credential is
    repeated (an S3 error may quote the key id), whatever DuckDB says."""
    text = str(exc).strip()
    for secret in redact:
        text = text.replace(secret, "[redacted]")
    if isinstance(exc, duckdb.InterruptException) or timed_out:
        return QueryTimeout(f"the query ran longer than {limits.timeout_s:g} s and was stopped",
                            "narrow it: filter on date, task and host (they select whole objects), or raise "
                            "query.timeout_seconds")
    if isinstance(exc, duckdb.PermissionException):
        return NotAllowed(f"not allowed: {text.removeprefix('Permission Error: ')}",
                          "queries read only the archive through the views lines and logs: no local files, "
                          "no other buckets, prefixes or URLs")
    if isinstance(exc, duckdb.OutOfMemoryException):
        return QueryTooLarge(f"the query needs more than {limits.memory_bytes >> 20} MiB: {text.splitlines()[0]}",
                             "aggregate or filter more, select fewer columns, or raise query.memory_bytes")
    if isinstance(exc, duckdb.InvalidInputException) and "configuration has been locked" in text:
        return NotAllowed(f"not allowed: {text}", "settings cannot be changed by a query")
    if isinstance(exc, (duckdb.HTTPException, duckdb.IOException)):
        # one line, like the store's own errors: what failed, where, and DuckDB's first line of why
        first = text.splitlines()[0].removeprefix("IO Error: ").removeprefix("HTTP Error: ")
        where = " at " + root if root else ""
        return StoreUnavailable(f"the query could not read the archive{where}: {first}".replace("  ", " "),
                                "check that the store is reachable (store.url, store.endpoint) and its "
                                "credentials; logship query reads it directly")
    return QueryError(text, _HINT_SELECT)


# --- search: grep for people who don't write SQL ---------------------------------------------

SEARCH_COLUMNS = "task, host, line_no, ts, stream, byte_offset, byte_end, partial, truncated, line"
_RE2_SPECIAL = set("\\.+*?()|[]{}^$")


@dataclass(frozen=True)
class Search:
    """A literal substring search over `lines`, newest matches first."""

    pattern: str
    ignore_case: bool = False
    task: str | None = None
    host: str | None = None
    since_ns: int | None = None
    stream: str | None = None
    limit: int = 100

    def sql(self) -> str:
        if not self.pattern:
            raise QueryError("no pattern given", "give the text to look for, e.g. logship grep 'disk full'")
        where = [self.match_sql()]
        if self.task:
            where.append(f"task = {_literal(self.task)}")
        if self.host:
            where.append(f"host = {_literal(self.host)}")
        if self.stream:
            where.append(f"stream = {_literal(self.stream)}")
        if self.since_ns is not None:
            # date prunes whole objects; a line of time T lies in a partition dated at most
            # MAX_SEGMENT_SPAN_S before T (the date is its segment's first chunk's)
            floor = names.lines_date(self.since_ns - MAX_SEGMENT_SPAN_S * 1_000_000_000)
            where.append(f"date >= DATE {_literal(floor)}")
            where.append(f"ts >= make_timestamp({self.since_ns // 1000})")
        # one more than asked for says whether there are more
        return (f"SELECT {SEARCH_COLUMNS} FROM lines WHERE {' AND '.join(where)} "
                f"ORDER BY ts DESC, task, host, line_no DESC LIMIT {int(self.limit) + 1}")

    def match_sql(self) -> str:
        """The line filter. Any case is a `(?i)` regexp of the escaped pattern: on DuckDB 1.4.4 it takes
        ≈ 1.3x the time of contains, where ILIKE takes ≈ 4x and contains(lower(line), …) ≈ 2-3x, as both
        lowercase every line (bench/query.py, docs/query.md)."""
        if not self.ignore_case:
            return f"contains(line, {_literal(self.pattern)})"
        escaped = "".join("\\" + ch if ch in _RE2_SPECIAL else ch for ch in self.pattern)
        return f"regexp_matches(line, {_literal('(?i)' + escaped)})"


_FLOATS = frozenset({"float", "double"})


def _ident(name: str) -> str:
    """A quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


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
        fields = ", ".join(f"{_ident(n)} := {_json_value(f'struct_extract({x}, {_literal(n)})', c, depth)}"
                           for n, c in _children(t))
        return f"CASE WHEN {x} IS NULL THEN NULL ELSE struct_pack({fields}) END"
    if t.id == "map":
        value = _json_value(f"{v}.value", _children(t)[1][1], depth + 1)
        return f"map_from_entries(list_transform(map_entries({x}), {v} -> {{'key': {v}.key, 'value': {value}}}))"
    return f"to_json(CAST({x} AS VARCHAR))"  # a union holding a float: its text
