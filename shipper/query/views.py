"""The views a query sees, as SQL (docs/query.md): `lines` (the query copies and the compacted parts, less
what shipper/query/lineset.py hides) and `logs` (one row per run, from the catalog: shipper/query/logsview.py).
"""

from __future__ import annotations

from shipper.catalog.rows import PHASES
from shipper.format import names

from .sql import literal

LINES_COLS = ", ".join(name for name, _ in names.LINES_COLUMNS)
LOGS_COLS = ("task, host, status, exit_code, signal, started, ended, size, lines, labels, command, run_id, "
             "segments, dropped_bytes, updated")
CATALOG_TABLE = "logship_catalog_"  # a query's catalog rows (Database._read_catalog, shipper/query/logsview.py)
NO_LINES = ("SELECT " + ", ".join(f"NULL::{sql} AS {name}" for name, sql in names.LINES_COLUMNS)
            + ", NULL::DATE AS date WHERE false")
# `lines` is the query copies (one object per segment, lines/) and the compacted parts (compact/), less
# what a compacted part replaces and the logs gc is deleting; the lists come from shipper.query.lineset, set
# per query as variables (Database.snapshot). Filters on `filename`, `task` and `host` select whole objects.
COPIES, PARTS = "logship_copies_", "logship_parts_"
VAR_HIDDEN, VAR_PARTS, VAR_GONE = "logship_hidden", "logship_parts", "logship_gone"
NOT_GONE = f"NOT list_contains(coalesce(getvariable('{VAR_GONE}'), []::VARCHAR[]), task || '/' || host)"
EMPTY = {  # the views of an archive that holds no such objects yet: no rows, the same columns
    COPIES: NO_LINES,
    PARTS: NO_LINES,
    "logs": "SELECT NULL::VARCHAR AS task, NULL::VARCHAR AS host, NULL::VARCHAR AS status, NULL::INTEGER AS exit_code, "
            "NULL::INTEGER AS signal, NULL::TIMESTAMP AS started, NULL::TIMESTAMP AS ended, NULL::BIGINT AS size, "
            "NULL::BIGINT AS lines, NULL::MAP(VARCHAR, VARCHAR) AS labels, NULL::VARCHAR[] AS command, "
            "NULL::VARCHAR AS run_id, NULL::BIGINT AS segments, NULL::BIGINT AS dropped_bytes, "
            "NULL::TIMESTAMP AS updated WHERE false",
}


def sources(root: str) -> dict[str, str]:
    """What each view selects, over the archive at `root` (archive_root)."""
    return {
        COPIES: f"SELECT {LINES_COLS}, date FROM read_parquet("
                f"{literal(root + names.LINES_GLOB)}, hive_partitioning = true, "
                "hive_types = {'date': DATE, 'task': VARCHAR, 'host': VARCHAR}, filename = true) "
                f"WHERE NOT list_contains(coalesce(getvariable('{VAR_HIDDEN}'), []::VARCHAR[]), filename) "
                f"AND filename <> {literal(root + names.LINES_PLACEHOLDER)} AND {NOT_GONE}",
        PARTS: f"SELECT {LINES_COLS}, date FROM read_parquet("
               f"{literal(root + names.COMPACT_GLOB)}, hive_partitioning = true, "
               "hive_types = {'date': DATE}, filename = true) "
               f"WHERE list_contains(coalesce(getvariable('{VAR_PARTS}'), []::VARCHAR[]), filename) "
               f"AND {NOT_GONE}",
        # Queries that name `logs` read the catalog's rows (Database._read_catalog); one that reaches it in a
        # way the check does not see (query_table) finds it empty.
        "logs": EMPTY["logs"],
    }


def logs_over_catalog(table: str) -> str:
    """The `logs` view over a query's catalog rows in `table` (CATALOG_TABLE): of each run the row of the
    highest (phase, version), shown unless gc is deleting or deleted the log."""
    phase = "CASE status " + " ".join(f"WHEN {literal(s)} THEN {p}" for s, p in PHASES.items()) + " END"
    return (f"SELECT task, host, status, exit_code::INTEGER AS exit_code, signal::INTEGER AS signal, "
            "make_timestamp(started_ns // 1000) AS started, make_timestamp(ended_ns // 1000) AS ended, size, lines, "
            "labels, command, run_id, segments, dropped_bytes, make_timestamp(version_ns // 1000) AS updated "
            f"FROM (SELECT *, {phase} AS phase_, row_number() OVER (PARTITION BY task, host, run_id "
            f"ORDER BY phase_ DESC, version_ns DESC) AS rank_ FROM {table}) WHERE rank_ = 1 AND phase_ < 3")
