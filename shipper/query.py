"""SQL over the archive: a sandboxed DuckDB with the `lines` and `logs` views (docs/query.md).

The CLI (`logship query`, `logship grep`) and the API (POST /api/v1/query, GET /api/v1/search) both
run queries through `Database`: one SELECT at a time, read-only, within time, row and memory limits.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from . import lineset, names
from .config import Config, QueryConfig, StoreConfig
from .errors import ConfigError, LogshipError, StoreUnavailable
from .manifest import DELETING

FETCH_ROWS = 2048  # rows per fetch: one round trip to the DuckDB thread per this many rows
# A segment's first chunk starts its date partition, and a segment is sealed at most
# spool.segment_seconds (≤ 7 days by config) after it: a line of time T lies in a partition dated
# at most this long before T. Searches by time widen their date filter by this much.
MAX_SEGMENT_SPAN_S = 7 * 86400

# DuckDB reads a JSON object whole, in a buffer twice this size: 32 MiB holds the manifest of a log
# of ~100k segments (1.6 TB at 16 MiB segments) and keeps the buffer well within query.memory_bytes.
MANIFEST_MAX = 32 << 20
_LINES_COLS = ", ".join(name for name, _ in names.LINES_COLUMNS)
# One row per log, from the manifests: what `logs` shows, with the manifest's JSON types.
_MANIFEST_COLUMNS = ("{task: 'VARCHAR', host: 'VARCHAR', run_id: 'VARCHAR', status: 'VARCHAR', "
                     "exit_code: 'INTEGER', signal: 'INTEGER', started_ns: 'BIGINT', ended_ns: 'BIGINT', "
                     "size: 'BIGINT', lines: 'BIGINT', labels: 'MAP(VARCHAR, VARCHAR)', command: 'VARCHAR[]', "
                     "dropped_bytes: 'BIGINT', updated_ns: 'BIGINT', segments: 'JSON[]'}")
_LOGS_SELECT = ("SELECT task, host, status, exit_code, signal, make_timestamp(started_ns // 1000) AS started, "
                "make_timestamp(ended_ns // 1000) AS ended, size, lines, labels, command, run_id, "
                "len(segments) AS segments, dropped_bytes, make_timestamp(updated_ns // 1000) AS updated")
_NO_LINES = ("SELECT " + ", ".join(f"NULL::{sql} AS {name}" for name, sql in names.LINES_COLUMNS)
             + ", NULL::DATE AS date WHERE false")
# `lines` is the query copies (one object per segment, lines/) and the compacted parts (compact/), less
# what a compacted part replaces and the logs gc is deleting; the lists come from shipper.lineset, set
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
        try:
            self._setup(cfg.store)
        except BaseException:
            self._con.close()
            raise

    def _setup(self, store: StoreConfig) -> None:
        con = self._con
        if self.root.startswith("s3://"):
            _load_httpfs(con)
            con.execute(_secret_sql(store, self.root))
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

    def _views(self, which: tuple[str, ...] | set[str]) -> None:
        """(Re)create views; a view over objects the archive does not hold yet has no rows until it does."""
        sources = {
            _COPIES: f"SELECT {_LINES_COLS}, date FROM read_parquet("
                     f"{_literal(self.root + 'lines/date=*/task=*/host=*/*.parquet')}, hive_partitioning = true, "
                     "hive_types = {'date': DATE, 'task': VARCHAR, 'host': VARCHAR}, filename = true) "
                     f"WHERE NOT list_contains(coalesce(getvariable('{_VAR_HIDDEN}'), []::VARCHAR[]), filename) "
                     f"AND filename <> {_literal(self.root + names.LINES_PLACEHOLDER)} AND {_NOT_GONE}",
            _PARTS: f"SELECT {_LINES_COLS}, date FROM read_parquet("
                    f"{_literal(self.root + 'compact/date=*/*.parquet')}, hive_partitioning = true, "
                    "hive_types = {'date': DATE}, filename = true) "
                    f"WHERE list_contains(coalesce(getvariable('{_VAR_PARTS}'), []::VARCHAR[]), filename) AND {_NOT_GONE}",
            "logs": f"{_LOGS_SELECT} FROM read_json({_literal(self.root + 'logs/*/*/manifest.json')}, "
                    f"format = 'auto', maximum_object_size = {MANIFEST_MAX}, columns = {_MANIFEST_COLUMNS}) "
                    f"WHERE status IS DISTINCT FROM {_literal(DELETING)}",
        }
        with self._con.cursor() as cur:  # the shared connection itself only makes cursors
            for name in which:
                try:
                    cur.execute(f"CREATE OR REPLACE VIEW {name} AS {sources[name]}")
                    self._empty.discard(name)
                except duckdb.IOException as exc:
                    if "No files found" not in str(exc):
                        raise _translate(exc, self.limits) from exc
                    cur.execute(f"CREATE OR REPLACE VIEW {name} AS {_EMPTY[name]}")
                    self._empty.add(name)

    def close(self) -> None:
        self._con.close()

    # --- which objects make up `lines` (shipper/lineset.py) ------------------------------------------

    def snapshot(self, cur: duckdb.DuckDBPyConnection) -> lineset.Snapshot:
        """List compacted parts and gc's markers, and set on `cur` what its queries of `lines` read.

        One listing per query: a query reads the parts, originals and logs of one moment, and what
        compaction or gc replace later stays readable for query.grace_seconds (docs/query.md).
        """
        listed = [r[0] for r in cur.execute("SELECT file FROM glob(?)", [self.root + "compact/date=*/*"]).fetchall()]
        marks = [r[0] for r in cur.execute("SELECT file FROM glob(?)", [self.root + "deleting/*/*.json"]).fetchall()]
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
            snap = self.snapshot(cur)
            # A view made while the archive had no such objects must now see those the snapshot names
            # (compact/ never empties once it has a part: a part is only ever replaced by another).
            if self._empty and (snap.shown or _COPIES in self._empty):
                with self._lock:
                    self._views(set(self._empty))
        except duckdb.Error as exc:
            cur.close()
            raise _translate(exc, self.limits) from exc
        except BaseException:
            cur.close()
            raise
        return cur

    # --- running a query ---------------------------------------------------------------------

    def check(self, sql: str) -> None:
        """Raise NotAllowed unless `sql` is exactly one SELECT statement."""
        if not isinstance(sql, str) or not sql.strip():
            raise QueryError("no SQL given", _HINT_SELECT)
        try:
            with self._con.cursor() as cur:
                statements = cur.extract_statements(sql)
        except duckdb.Error as exc:
            raise _translate(exc, self.limits) from exc
        if len(statements) != 1:
            raise NotAllowed(f"{len(statements)} statements given; one SELECT is allowed", _HINT_SELECT)
        kind = statements[0].type.name  # SELECT, COPY, ATTACH, LOAD (INSTALL too), SET, CREATE, ...
        if kind != "SELECT":
            what = "INSTALL and LOAD" if kind == "LOAD" else kind.replace("_", " ")
            raise NotAllowed(f"{what} statements are not allowed: queries are read-only",
                             "only SELECT over the views lines and logs runs here; COPY, ATTACH, INSTALL, LOAD, "
                             "SET, PRAGMA, CREATE and other statements are refused")

    def execute(self, sql: str, limits: Limits | None = None) -> Result:
        """Start a query (in the calling thread: call it off the event loop). Raises QueryError and its kinds."""
        limits = limits or self.limits
        self.check(sql)
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
        cur = self.cursor()
        result = Result(cur, limits)
        try:
            result.arm()  # binding lists the archive's objects: it counts against the time limit too
            rel = cur.sql(sql)
            result.columns = list(rel.columns)
            result.types = [str(t) for t in rel.types]
            result.start(rel)
        except duckdb.Error as exc:
            result.close()
            raise _translate(exc, limits, result.timed_out) from exc
        except BaseException:
            result.close()
            raise
        return result


@dataclass
class Result:
    """A running query: its columns, then rows as text (fetch_text) or JSON objects (fetch_json)."""

    cursor: duckdb.DuckDBPyConnection
    limits: Limits
    columns: list[str] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    rows: int = 0
    truncated: bool = False
    timed_out: bool = False
    started: float = field(default_factory=time.monotonic)
    _timer: threading.Timer | None = None
    _text: Any = None
    _json: Any = None

    def arm(self) -> None:
        """Start the clock of query.timeout_seconds."""
        self._timer = threading.Timer(self.limits.timeout_s, self._interrupt)
        self._timer.daemon = True
        self._timer.start()

    def start(self, rel: duckdb.DuckDBPyRelation) -> None:
        limit = self.limits.max_rows + 1  # one more than allowed tells that the answer was cut
        # Rows are rendered by DuckDB: every type as text (for CSV and tables) or as a JSON object.
        n = len(self.columns)
        self._text = rel.project(", ".join(f"CAST(#{i} AS VARCHAR)" for i in range(1, n + 1))).limit(limit)
        # the row as a struct named by an alias no query's column is likely to have
        self._json = _finite(rel).set_alias("logship_row_").project(
            "CAST(to_json(logship_row_) AS VARCHAR)").limit(limit)

    def _interrupt(self) -> None:
        self.timed_out = True
        self.interrupt()

    def interrupt(self) -> None:
        """Stop the running query (from any thread)."""
        try:
            self.cursor.interrupt()
        except duckdb.Error:
            pass  # already closed

    def fetch_text(self) -> Iterator[list[tuple[str | None, ...]]]:
        """Batches of rows, each value as text (None for NULL)."""
        return self._fetch(self._text)

    def fetch_json(self) -> Iterator[list[str]]:
        """Batches of rows, each a JSON object keyed by column name."""
        return (list(r[0] for r in batch) for batch in self._fetch(self._json))

    def _fetch(self, rel: duckdb.DuckDBPyRelation) -> Iterator[list[tuple[Any, ...]]]:
        try:
            rel.execute()
            while self.rows < self.limits.max_rows:
                batch = rel.fetchmany(min(FETCH_ROWS, self.limits.max_rows + 1 - self.rows))
                if not batch:
                    return
                if self.rows + len(batch) > self.limits.max_rows:
                    self.truncated = True
                    batch = batch[:self.limits.max_rows - self.rows]
                self.rows += len(batch)
                yield batch
        except duckdb.Error as exc:
            raise _translate(exc, self.limits, self.timed_out) from exc
        finally:
            self.close()

    @property
    def elapsed_ms(self) -> int:
        return int((time.monotonic() - self.started) * 1000)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        try:
            self.cursor.close()
        except duckdb.Error:
            pass


def _load_httpfs(con: duckdb.DuckDBPyConnection) -> None:
    """httpfs from the PyPI package duckdb-ext-httpfs (DESIGN §8): nothing is downloaded at run time."""
    try:
        import duckdb_ext
    except ImportError as exc:
        raise ConfigError("SQL over an S3 store needs the duckdb-ext packages",
                          "pip install duckdb-ext duckdb-ext-httpfs (they come with logship)") from exc
    duckdb_ext.init(con)
    con.execute("LOAD httpfs")


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
        opts += [f"ENDPOINT {_literal(m.group(2))}", "URL_STYLE 'path'", f"USE_SSL {str(m.group(1) == 'https').lower()}"]
    return f"CREATE OR REPLACE SECRET logship_store (TYPE s3, {', '.join(opts)})"


def _translate(exc: duckdb.Error, limits: Limits, timed_out: bool = False) -> LogshipError:
    """DuckDB's errors as the project's own, each with what is wrong and what to do."""
    text = str(exc).strip()
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
    if isinstance(exc, (duckdb.HTTPException, duckdb.IOException)) and not isinstance(exc, duckdb.PermissionException):
        return StoreUnavailable(f"the query could not read the archive: {text}",
                                "check that the store is reachable; logship query reads it directly")
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


def _finite(rel: duckdb.DuckDBPyRelation) -> duckdb.DuckDBPyRelation:
    """`rel` with infinite and NaN floats as the strings "inf", "-inf", "nan": to_json writes them as the
    bare words Infinity and NaN, which are not JSON. Top-level columns and lists of floats."""
    floats = {"DOUBLE", "FLOAT"}
    types = [str(t) for t in rel.types]
    if not any(t in floats or t.removesuffix("[]") in floats for t in types):
        return rel

    def json_of(x: str) -> str:
        return f"CASE WHEN isfinite({x}) OR {x} IS NULL THEN to_json({x}) ELSE to_json(CAST({x} AS VARCHAR)) END"

    exprs = []
    for i, (name, t) in enumerate(zip(rel.columns, types), 1):
        quoted = '"' + name.replace('"', '""') + '"'
        if t in floats:
            exprs.append(f"{json_of(f'#{i}')} AS {quoted}")
        elif t.removesuffix("[]") in floats:
            exprs.append(f"list_transform(#{i}, logship_x_ -> {json_of('logship_x_')}) AS {quoted}")
        else:
            exprs.append(f"#{i} AS {quoted}")
    return rel.project(", ".join(exprs))
