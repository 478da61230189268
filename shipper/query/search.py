"""Search: grep for people who don't write SQL (`logship grep`, GET /api/v1/search), as a query of `lines`."""

from __future__ import annotations

from dataclasses import dataclass

from shipper.format import names

from .rules import QueryError
from .sql import literal

# A segment's first chunk starts its date partition, and a segment is sealed at most
# spool.segment_seconds (≤ 7 days by config) after it: a line of time T lies in a partition dated
# at most this long before T. Searches by time widen their date filter by this much.
MAX_SEGMENT_SPAN_S = 7 * 86400
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
            where.append(f"task = {literal(self.task)}")
        if self.host:
            where.append(f"host = {literal(self.host)}")
        if self.stream:
            where.append(f"stream = {literal(self.stream)}")
        if self.since_ns is not None:
            # date prunes whole objects; a line of time T lies in a partition dated at most
            # MAX_SEGMENT_SPAN_S before T (the date is its segment's first chunk's)
            floor = names.lines_date(self.since_ns - MAX_SEGMENT_SPAN_S * 1_000_000_000)
            where.append(f"date >= DATE {literal(floor)}")
            where.append(f"ts >= make_timestamp({self.since_ns // 1000})")
        # one more than asked for says whether there are more
        return (f"SELECT {SEARCH_COLUMNS} FROM lines WHERE {' AND '.join(where)} "
                f"ORDER BY ts DESC, task, host, line_no DESC LIMIT {int(self.limit) + 1}")

    def match_sql(self) -> str:
        """The line filter. Any case is a `(?i)` regexp of the escaped pattern: on DuckDB 1.4.4 it takes
        ≈ 1.3x the time of contains, where ILIKE takes ≈ 4x and contains(lower(line), …) ≈ 2-3x, as both
        lowercase every line (bench/query.py, docs/query.md)."""
        if not self.ignore_case:
            return f"contains(line, {literal(self.pattern)})"
        escaped = "".join("\\" + ch if ch in _RE2_SPECIAL else ch for ch in self.pattern)
        return f"regexp_matches(line, {literal('(?i)' + escaped)})"
