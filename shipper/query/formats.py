"""Query answers as bytes: CSV, JSON and NDJSON (streamed by the API and the CLI), and tables for a terminal."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shipper.query.result import Result

CONTENT_TYPES = {"json": "application/json", "csv": "text/csv; charset=utf-8",
                 "ndjson": "application/x-ndjson"}
TABLE_CELL_MAX = 120  # characters of a cell shown in a table; `--format csv` gives whole values


def encode(result: Result, fmt: str) -> Generator[bytes, None, None]:
    """The answer of a started query in `fmt` (json, csv, ndjson), piece by piece.

    Each piece fetches one batch of rows from DuckDB: iterate it off the event loop. JSON ends with
    row_count and truncated; CSV and NDJSON are cut at query.max_rows (the API says the limit in a header).
    """
    # The first piece holds the first rows too, so that fetching it runs the query: a query that
    # fails does so before anything is sent (the API can still answer 400).
    if fmt == "csv":
        head = _csv_rows([result.columns])
        for batch in result.fetch_text():
            yield head + _csv_rows(batch)
            head = b""
        if head:
            yield head
    elif fmt == "ndjson":
        for objs in result.fetch_json():
            yield ("\n".join(objs) + "\n").encode()
    elif fmt == "json":
        columns = [{"name": n, "type": t} for n, t in zip(result.columns, result.types, strict=True)]
        head = b'{"columns": ' + json.dumps(columns).encode() + b', "rows": ['
        sep = b"\n"
        for objs in result.fetch_json():
            yield head + sep + ",\n".join(objs).encode()
            head, sep = b"", b",\n"
        yield head + json_tail(result)
    else:
        raise ValueError(f"unknown format {fmt!r}")


def json_tail(result: Result, error: dict[str, str] | None = None) -> bytes:
    tail = {"row_count": result.rows, "truncated": result.truncated, "row_limit": result.limits.max_rows,
            "elapsed_ms": result.elapsed_ms}
    if error is not None:
        tail["error"] = error  # type: ignore[assignment]
    return b"\n], " + json.dumps(tail).encode()[1:] + b"\n"


def _csv_rows(rows: list[list[str | None]] | list[list[str]]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)  # None is written as an empty field
    return out.getvalue().encode()


def table(result: Result) -> Iterator[str]:
    """An aligned text table (the whole answer is read first, to size the columns; it is at most max_rows)."""
    rows = [tuple(_cell(v) for v in row) for batch in result.fetch_text() for row in batch]
    head = tuple(result.columns)
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(head)]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip() + "\n"

    yield line(head)
    yield line(tuple("-" * w for w in widths))
    for r in rows:
        yield line(r)
    more = " (cut at query.max_rows; add LIMIT or raise it)" if result.truncated else ""
    yield f"({result.rows} row{'s' if result.rows != 1 else ''}{more}, {result.elapsed_ms} ms)\n"


def _cell(value: str | None) -> str:
    if value is None:
        return "NULL"
    # one line per row: control characters (newlines, tabs, ANSI escapes) are shown escaped
    text = value.encode("unicode_escape").decode("ascii") if not value.isprintable() else value
    return text if len(text) <= TABLE_CELL_MAX else text[:TABLE_CELL_MAX - 1] + "…"
