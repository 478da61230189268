"""The views a query sees, as SQL (docs/query.md): `lines` (the query copies and the compacted parts, less
what shipper/query/lineset.py hides) and `logs` (one row per good manifest).
"""

from __future__ import annotations

import json

from shipper.format import names
from shipper.format.manifest import DELETING, VERSION

from .sql import literal

# DuckDB reads a JSON object whole, in a buffer twice this size: 32 MiB holds the manifest of a log
# of ~100k segments (1.6 TB at 16 MiB segments) and keeps the buffer well within query.memory_bytes.
MANIFEST_MAX = 32 << 20
LINES_COLS = ", ".join(name for name, _ in names.LINES_COLUMNS)
# One row per log, from the manifests: what `logs` shows, with the manifest's JSON types.
MANIFEST_FIELDS = (("version", "INTEGER"), ("task", "VARCHAR"), ("host", "VARCHAR"), ("run_id", "VARCHAR"),
                   ("status", "VARCHAR"), ("exit_code", "INTEGER"), ("signal", "INTEGER"), ("started_ns", "BIGINT"),
                   ("ended_ns", "BIGINT"), ("size", "BIGINT"), ("lines", "BIGINT"),
                   ("labels", "MAP(VARCHAR, VARCHAR)"), ("command", "VARCHAR[]"), ("dropped_bytes", "BIGINT"),
                   ("updated_ns", "BIGINT"), ("segments", "JSON[]"))
LOGS_COLS = ("task, host, status, exit_code, signal, started, ended, size, lines, labels, command, run_id, "
             "segments, dropped_bytes, updated")
MANIFESTS_TABLE = "logship_manifests_"  # a query's manifests, parsed (Database._read_manifests)
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
        # the whole view, for queries that name it in a way the check does not see (query_table)
        "logs": logs_over(f"({manifests_sql(root)})"),
    }


def logs_over(table: str) -> str:
    """The `logs` view over a query's manifests read into `table` (MANIFESTS_TABLE)."""
    return f"SELECT {LOGS_COLS} FROM {table} WHERE problem IS NULL AND status IS DISTINCT FROM {literal(DELETING)}"


def manifests_sql(root: str) -> str:
    """One row per object named manifest.json under logs/: the columns of `logs`, its key, and `problem`:
    NULL for a good manifest, else why it is left out. The store is untrusted: any object, any bytes, must
    cost only its own row (docs/query.md). DuckDB reads each object whole (read_text), and an object it
    cannot hold (over query.memory_bytes) still fails the query."""
    fields = dict(MANIFEST_FIELDS)
    wrong = " ".join(f"WHEN coalesce(json_type(doc, '$.{n}') <> 'NULL', false) AND m.{n} IS NULL "
                     f"THEN 'its {n} is not {t.lower()}'" for n, t in MANIFEST_FIELDS)
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
        f"FROM (SELECT filename, size, valid, doc, try(from_json(doc, {literal(json.dumps(fields))})) AS m "
        f"FROM (SELECT filename, size, {valid} AS valid, CASE WHEN {valid} THEN "
        "CASE WHEN json_type(content) = 'OBJECT' THEN content END END AS doc "
        f"FROM read_text({literal(root + names.MANIFESTS_GLOB)})))"
    )
