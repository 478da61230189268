"""SQL over the archive: a sandboxed DuckDB with the `lines` and `logs` views (docs/query.md).

The CLI (`logship query`, `logship grep`) and the API (POST /api/v1/query, GET /api/v1/search) both
run queries through `Database`: one SELECT at a time, read-only, within time, row and memory limits.
Beside it: what a query may do (rules.py), the views' SQL (views.py), an answer's rows (result.py),
grep as SQL (search.py).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb

from shipper.config import Config, StoreConfig
from shipper.errors import ConfigError, LogshipError, StoreUnavailable
from shipper.format import names
from shipper.query import lineset, logsview, views

from .result import Result
from .rules import DENIED_FUNCTIONS, HINT_SELECT, Limits, NotAllowed, QueryError, check_text, not_select, translate
from .sql import literal

log = logging.getLogger("logship.query")
# Settings httpfs fills from AWS_* variables when it loads; DuckDB shows settings to any query.
_CREDENTIAL_SETTINGS = ("s3_access_key_id", "s3_secret_access_key", "s3_session_token")
_VAR_SQL = "logship_sql_"  # the query's text, parsed by DuckDB's query() (off the GIL)
REPORT_EVERY_S = 600.0  # a bad catalog object is logged again after this long


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
        # catalog objects left out of `logs` as invalid (once bad manifests: the metric keeps its name), counted
        # each time a query met one
        self.bad_manifests = 0
        self._reported: dict[str, float] = {}  # object key -> when it was last logged
        self._catalog = logsview.CatalogRows(self.root)
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
        con.execute(f"SET allowed_directories = [{literal(self.root)}]")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        self._views((views.COPIES, views.PARTS, "logs"))
        with self._con.cursor() as cur:
            cur.execute(f"CREATE OR REPLACE VIEW lines AS SELECT * FROM {views.COPIES} "
                        f"UNION ALL SELECT * FROM {views.PARTS}")
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
        sources = views.sources(self.root)
        with self._con.cursor() as cur:  # the shared connection itself only makes cursors
            for name in which:
                try:
                    cur.execute(f"CREATE OR REPLACE VIEW {name} AS {sources[name]}")
                    self._empty.discard(name)
                except duckdb.IOException as exc:
                    if "No files found" not in str(exc):
                        raise self._translate(exc, self.limits) from exc
                    cur.execute(f"CREATE OR REPLACE VIEW {name} AS {views.EMPTY[name]}")
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
        for var, values in ((views.VAR_HIDDEN, [self.root + k for k in sorted(snap.hidden)]),
                            (views.VAR_PARTS, [self.root + p.key for p in snap.shown]),
                            (views.VAR_GONE, sorted(gone))):
            cur.execute(f"SET VARIABLE {var} = [{', '.join(map(literal, values))}]::VARCHAR[]")
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
        if self._empty and (snap.shown or views.COPIES in self._empty):
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
                raise not_select(cur, sql)
            raise QueryError(f"Parser Error: {doc.get('error_message', 'the SQL does not parse')}", HINT_SELECT)
        if len(doc["statements"]) != 1:
            raise NotAllowed(f"{len(doc['statements'])} statements given; one SELECT is allowed", HINT_SELECT)
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
                self._views((views.COPIES, views.PARTS, "logs"))
            return self._execute(sql, limits)

    def _execute(self, sql: str, limits: Limits) -> Result:
        result = Result(self._con.cursor(), limits, redact=self._credentials)
        cur = result.cursor
        try:
            result.arm()
            parsed = self._parse(cur, sql)
            self._refresh(cur)
            if parsed.reads_logs:
                result.skipped = self._read_catalog(cur)
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

    def _read_catalog(self, cur: duckdb.DuckDBPyConnection) -> list[tuple[str, str]]:
        """Read the catalog's rows once for this query (its `logs` view reads them) and report the objects
        left out: a log line per key (at most every REPORT_EVERY_S) and a count."""
        table, bad = self._catalog.table(cur)
        cur.register(views.CATALOG_TABLE, table)
        cur.execute(f"CREATE OR REPLACE TEMP VIEW logs AS {views.logs_over_catalog(views.CATALOG_TABLE)}")
        now = time.monotonic()
        for key, problem in bad:
            with self._lock:
                self.bad_manifests += 1
                last = self._reported.get(key)
                if last is not None and now - last < REPORT_EVERY_S:
                    continue
                self._reported[key] = now
            log.warning("catalog object %s left out of the logs view: %s", key, problem)
        return bad

    def _translate(self, exc: duckdb.Error, limits: Limits, timed_out: bool = False) -> LogshipError:
        return translate(exc, limits, timed_out, self._credentials, self.root)


@dataclass(frozen=True)
class _Parsed:
    reads_logs: bool  # the query names a table `logs`: its manifests are read and checked first


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
    opts = [f"KEY_ID {literal(key)}", f"SECRET {literal(secret)}", f"REGION {literal(store.region)}",
            f"SCOPE {literal(root)}"]
    if token := os.environ.get("AWS_SESSION_TOKEN"):
        opts.append(f"SESSION_TOKEN {literal(token)}")
    if store.endpoint:
        m = re.fullmatch(r"(https?)://([^/]+)/?", store.endpoint)
        if not m:
            raise ConfigError(f"store.endpoint = {store.endpoint!r} is not a URL", "write it like http://127.0.0.1:8333")
        opts += [f"ENDPOINT {literal(m.group(2))}", "URL_STYLE 'path'",
                 f"USE_SSL {str(m.group(1) == 'https').lower()}"]
    return f"CREATE OR REPLACE SECRET logship_store (TYPE s3, {', '.join(opts)})"
