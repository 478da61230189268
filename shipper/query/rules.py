"""What a query may do (DESIGN §8, docs/query.md): one SELECT over the views `lines` and `logs`, read-only,
within time, row and memory limits; the errors when it may not, DuckDB's own errors translated into them.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from shipper.config import QueryConfig
from shipper.errors import LogshipError, StoreUnavailable

# SQL text longer than this is refused before it is parsed: DuckDB parses some shapes in quadratic
# time (a chain of 16,000 ORs, 80 KB, takes ≈ 0.5-0.8 s here; 800 KB over a minute). Parsing runs in
# DuckDB's own threads, off the event loop and the GIL, under query.timeout_seconds (docs/query.md).
MAX_SQL_BYTES = 64 << 10
# Functions a query may not call: duckdb_secrets() shows the store's key id, and query() and
# json_execute_serialized_sql() run SQL built from strings, which the check of the text cannot see.
DENIED_FUNCTIONS = frozenset({"duckdb_secrets", "which_secret", "query", "json_execute_serialized_sql"})
HINT_SELECT = "send one SELECT over the views lines and logs (see docs/query.md)"


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


def check_text(sql: object) -> None:
    """The checks of the SQL text alone (cheap: fine on the event loop)."""
    if not isinstance(sql, str) or not sql.strip():
        raise QueryError("no SQL given", HINT_SELECT)
    if "\x00" in sql:
        raise QueryError(f"the SQL holds a NUL character (at character {sql.index(chr(0))}); DuckDB would "
                         "ignore everything after it", "remove it; to match a NUL in text write chr(0)")
    size = len(sql.encode("utf-8", "surrogatepass"))
    if size > MAX_SQL_BYTES:
        raise SqlTooLong(f"the SQL is {size} bytes; at most {MAX_SQL_BYTES} are taken",
                         "shorten it: filter on task, host and date, or use a shorter list (IN, regexp) "
                         "instead of a long chain of ORs")


def not_select(cur: duckdb.DuckDBPyConnection, sql: str) -> QueryError:
    """The refusal of a text that holds something else than SELECT statements, naming what it holds.
    extract_statements parses under the GIL: only short texts (the usual COPY, ATTACH, SET) get named."""
    if len(sql) > 4096:
        return NotAllowed("the SQL is not one SELECT statement", HINT_SELECT)
    statements = cur.extract_statements(sql)
    if len(statements) != 1:
        return NotAllowed(f"{len(statements)} statements given; one SELECT is allowed", HINT_SELECT)
    kind = statements[0].type.name  # COPY, ATTACH, LOAD (INSTALL too), SET, CREATE, ...
    what = "INSTALL and LOAD" if kind == "LOAD" else kind.replace("_", " ")
    if kind == "SELECT":  # a SELECT DuckDB cannot serialize, e.g. PIVOT: the check cannot see into it
        return NotAllowed("this kind of SELECT (PIVOT, ...) cannot be checked, so it is not allowed",
                          "write it with the PIVOT inside FROM: SELECT * FROM (... PIVOT ...), or use GROUP BY")
    return NotAllowed(f"{what} statements are not allowed: queries are read-only",
                      "only SELECT over the views lines and logs runs here; COPY, ATTACH, INSTALL, LOAD, "
                      "SET, PRAGMA, CREATE and other statements are refused")


def translate(exc: duckdb.Error, limits: Limits, timed_out: bool = False, redact: tuple[str, ...] = (),
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
    return QueryError(text, HINT_SELECT)
