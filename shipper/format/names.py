"""Every id check, object key and spool path is built here, and nowhere else.

Keys sort: segment numbers are fixed-width, so a plain listing is already in order.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from shipper.errors import InvalidId

ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
ID_RULE = "1-128 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit"


def check_id(kind: str, value: str) -> str:
    """Return `value` if it is a valid task or host id, else raise InvalidId."""
    if not isinstance(value, str) or not ID_RE.fullmatch(value):
        raise InvalidId(f"invalid {kind} id {value!r}", f"a {kind} id is {ID_RULE}")
    return value


LOGS_PREFIX = "logs/"
MANIFESTS_GLOB = "logs/*/*/manifest.json"  # every manifest, for DuckDB's readers (shipper/query/engine.py)


def log_prefix(task: str, host: str) -> str:
    return f"logs/{task}/{host}/"


def task_prefix(task: str) -> str:
    """The prefix of every log of `task`, on all its hosts."""
    return f"logs/{task}/"


def manifest_key(task: str, host: str) -> str:
    return f"{log_prefix(task, host)}manifest.json"


def liveness_key(task: str, host: str) -> str:
    """The watcher's copy of a running log's liveness.json (shipper/liveness_ship.py): rewritten in place, like
    the manifest; the manifest keeps the last one once the log ends."""
    return f"{log_prefix(task, host)}liveness.json"


def segment_key(task: str, host: str, seq: int, compression: str) -> str:
    ext = ".zst" if compression == "zstd" else ""
    return f"{log_prefix(task, host)}{seq:08d}.log{ext}"


def index_key(task: str, host: str, seq: int, compression: str) -> str:
    ext = ".zst" if compression == "zstd" else ""
    return f"{log_prefix(task, host)}{seq:08d}.idx{ext}"


def checkpoint_keys(task: str, host: str, seq: int, raw_size: int, compression: str) -> tuple[str, str]:
    """Keys of a checkpoint of the open segment `seq` holding its first `raw_size` bytes.

    The size is part of the name so that one key never holds two different contents.
    """
    ext = ".zst" if compression == "zstd" else ""
    base = f"{log_prefix(task, host)}{seq:08d}.ckpt-{raw_size:012d}"
    return f"{base}.log{ext}", f"{base}.idx{ext}"


# Delta objects (docs/checkpoints.md): the bytes [start, end) of the log (offsets in the whole log) that
# open segment `seq` gained since the last checkpoint, with their chunk index. Both ends are in the name,
# so a delta re-cut after a crash from the same start (later end) is another key: one key, one content.
# `.d` sorts before `.frames`, `.idx` and `.log`: the deltas of one segment list together, in order.
DELTA_DIGITS = 15  # offsets below 10^15 (a petabyte per log)
_DELTA_NAME_RE = re.compile(r"(\d{8})\.d(\d{15})-(\d{15})\.(zst|raw)")


def delta_prefix(task: str, host: str, seq: int) -> str:
    """The prefix under which exactly the deltas of segment `seq` list."""
    return f"{log_prefix(task, host)}{seq:08d}.d"


def delta_key(task: str, host: str, seq: int, start: int, end: int, compression: str) -> str:
    if not 0 <= start < end < 10 ** DELTA_DIGITS:
        raise ValueError(f"delta [{start}, {end}) is empty or out of range")
    ext = "zst" if compression == "zstd" else "raw"
    return f"{delta_prefix(task, host, seq)}{start:015d}-{end:015d}.{ext}"


def parse_delta_name(name: str) -> tuple[int, int, int, str] | None:
    """`NNNNNNNN.d<start>-<end>.zst|raw` (the last part of a key) -> (seq, start, end, compression), or None."""
    m = _DELTA_NAME_RE.fullmatch(name)
    if not m or int(m.group(2)) >= int(m.group(3)):
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3)), "zstd" if m.group(4) == "zst" else "none"


def frames_key(task: str, host: str, seq: int) -> str:
    """The frame table of sealed segment `seq` stored as its deltas (docs/checkpoints.md §4)."""
    return f"{log_prefix(task, host)}{seq:08d}.frames.zst"


def lines_key(date: str, task: str, host: str, seq: int) -> str:
    return f"lines/date={date}/task={task}/host={host}/{seq:08d}.parquet"


def lines_partition(date: str, task: str, host: str) -> str:
    """The prefix of one log's query copies dated `date`."""
    return f"lines/date={date}/task={task}/host={host}/"


LINES_PREFIX = "lines/"
LINES_GLOB = "lines/date=*/task=*/host=*/*.parquet"  # every query copy, for DuckDB (hive partitions)
# An object without rows that keeps lines/ from ever being empty again once something is deleted
# there: DuckDB refuses a glob that matches nothing (shipper/query/compact.py writes it before deleting).
LINES_PLACEHOLDER = "lines/date=1970-01-01/task=_/host=_/empty.parquet"
_LINES_KEY_RE = re.compile(r"lines/date=(\d{4}-\d{2}-\d{2})/task=([^/]+)/host=([^/]+)/(\d{8})\.parquet")


def partition_date(key: str) -> str:
    """The date D of a query copy's or a part's key (`lines/date=D/...`, `compact/date=D/...`)."""
    return key.split("/")[1].removeprefix("date=")


def parse_lines_key(key: str) -> tuple[str, str, str, int] | None:
    """`lines/date=D/task=T/host=H/NNNNNNNN.parquet` -> (D, T, H, N), or None for anything else."""
    m = _LINES_KEY_RE.fullmatch(key)
    if not m or not ID_RE.fullmatch(m.group(2)) or not ID_RE.fullmatch(m.group(3)):
        return None
    return m.group(1), m.group(2), m.group(3), int(m.group(4))


# Compacted query copies (shipper/query/compact.py, docs/query.md): many small copies of a date merged into
# one part, named by when it was made, so names sort by age; `.done` beside a part says the objects
# it replaced are deleted.
COMPACT_PREFIX = "compact/"
COMPACT_GLOB = "compact/date=*/*.parquet"  # every part, for DuckDB
COMPACT_ALL_GLOB = "compact/date=*/*"  # every part and `.done`
DONE_SUFFIX = ".done"
_COMPACT_KEY_RE = re.compile(r"compact/date=(\d{4}-\d{2}-\d{2})/(\d{19})-([0-9a-f]{8,32})\.parquet")


def compact_key(date: str, created_ns: int, token: str) -> str:
    return f"compact/date={date}/{created_ns:019d}-{token}.parquet"


def parse_compact_key(key: str) -> tuple[str, int] | None:
    """`compact/date=D/<created_ns>-<token>.parquet` -> (D, created_ns), or None for anything else."""
    m = _COMPACT_KEY_RE.fullmatch(key)
    return (m.group(1), int(m.group(2))) if m else None


def done_key(part_key: str) -> str:
    return part_key + DONE_SUFFIX


# A log that `logship gc` is deleting has a marker here from before its first object is deleted
# until after its last one is (shipper/retention/gc.py); readers leave such a log out.
DELETING_PREFIX = "deleting/"
DELETING_GLOB = "deleting/*/*.json"  # every marker, for DuckDB


def deleting_key(task: str, host: str) -> str:
    return f"{DELETING_PREFIX}{task}/{host}.json"


def parse_deleting_key(key: str) -> tuple[str, str] | None:
    parts = key.split("/")
    if (len(parts) == 3 and parts[0] + "/" == DELETING_PREFIX and parts[2].endswith(".json")
            and ID_RE.fullmatch(parts[1]) and ID_RE.fullmatch(parts[2][:-5])):
        return parts[1], parts[2][:-5]
    return None


# The published set of what `lines` reads, for engines without logship's code (shipper/query/published.py,
# docs/query.md "Outside engines"): immutable snapshots named by 2^64-1 minus when their listing began, so the
# first key of a listing (or the least name a glob finds) is the newest.
LIVE_PREFIX = "live/lines/"
LIVE_GLOB = "live/lines/s-*.json"
_LIVE_KEY_RE = re.compile(r"live/lines/s-([0-9a-f]{16})-([0-9a-f]{8})\.json")


def live_key(listed_ns: int, token: str) -> str:
    return f"{LIVE_PREFIX}s-{(2 ** 64 - 1 - listed_ns):016x}-{token}.json"


def parse_live_key(key: str) -> int | None:
    """`live/lines/s-<inverted listed_ns>-<hex8>.json` -> listed_ns, or None for anything else."""
    m = _LIVE_KEY_RE.fullmatch(key)
    return 2 ** 64 - 1 - int(m.group(1), 16) if m else None


def lines_date(ts_ns: int) -> str:
    """The date partition of a segment's query copy: the UTC date of its first chunk."""
    return time.strftime("%Y-%m-%d", time.gmtime(ts_ns // 1_000_000_000))


# The columns of a query copy, in order, with their SQL types (docs/query.md); date, task and host
# are also the object's hive partitions.
LINES_COLUMNS = [("task", "VARCHAR"), ("host", "VARCHAR"), ("seq", "INTEGER"), ("line_no", "BIGINT"),
                 ("ts", "TIMESTAMP"), ("stream", "VARCHAR"), ("byte_offset", "BIGINT"), ("byte_end", "BIGINT"),
                 ("partial", "BOOLEAN"), ("truncated", "BOOLEAN"), ("line", "VARCHAR")]


# The catalog of logs (shipper/catalog, docs/format.md "Catalog"): one row per run, derived from manifests.
# head/ holds the small records (`r-<row>`) and the summaries (`s-<inverted listing ns>-<hex>.parquet`), so one
# LIST finds both; running/ one entry per running run; parts/ the compacted rows, per UTC start day.
CATALOG_PREFIX = "catalog/v1/"
CATALOG_HEAD = CATALOG_PREFIX + "head/"
CATALOG_RUNNING = CATALOG_PREFIX + "running/"
CATALOG_PARTS = CATALOG_PREFIX + "parts/"
CATALOG_LIVE = CATALOG_PREFIX + "live/"  # a running run's sealed size and silence (shipper/catalog/rows.py live_name)
CATALOG_REBUILD_STATE = CATALOG_PREFIX + "rebuild/state.json"
_CATALOG_PART_RE = re.compile(r"catalog/v1/parts/day=(\d{4}-\d{2}-\d{2})/(\d{19})-([0-9a-f]{16})\.parquet")
_CATALOG_SUMMARY_RE = re.compile(r"catalog/v1/head/s-([0-9a-f]{16})-([0-9a-f]{8})\.parquet")


def catalog_record_key(row: str) -> str:
    return f"{CATALOG_HEAD}r-{row}"


def parse_catalog_record_key(key: str) -> str | None:
    """`catalog/v1/head/r-<row>` -> <row> (parsed by shipper.catalog.rows), or None."""
    row = key.removeprefix(CATALOG_HEAD + "r-")
    return row if row != key and "/" not in row else None


def catalog_running_key(row: str) -> str:
    return f"{CATALOG_RUNNING}{row}"


def catalog_live_key(row: str) -> str:
    return f"{CATALOG_LIVE}{row}"


def catalog_part_key(day: str, created_ns: int, token: str) -> str:
    return f"{CATALOG_PARTS}day={day}/{created_ns:019d}-{token}.parquet"


def parse_catalog_part_key(key: str) -> tuple[str, int] | None:
    """`catalog/v1/parts/day=D/<created_ns>-<hex16>.parquet` -> (D, created_ns), or None."""
    m = _CATALOG_PART_RE.fullmatch(key)
    return (m.group(1), int(m.group(2))) if m else None


def catalog_summary_key(listed_ns: int, token: str) -> str:
    """Newest first: the key holds 2^64-1 minus the time the summary's listing began."""
    return f"{CATALOG_HEAD}s-{(1 << 64) - 1 - listed_ns:016x}-{token}.parquet"


def parse_catalog_summary_key(key: str) -> int | None:
    """A summary key -> the time its listing began (ns), or None."""
    m = _CATALOG_SUMMARY_RE.fullmatch(key)
    return (1 << 64) - 1 - int(m.group(1), 16) if m else None


# Keys nothing is stored under: GET /readyz lists the prefix, an idle watcher HEADs the key, to learn
# whether the store answers.
READY_PROBE_PREFIX = "readyz/"
STORE_PROBE_KEY = "readyz/probe"


# --- Nightingale ibex tasks (docs/ibex.md) ---------------------------------------------------
# Ibex task ids are integers. The first run of ibex task N on a host is the log ibex-N/<host>; a redo
# of the same host (Nightingale's "redo") is ibex-N.2, then ibex-N.3: a run never overwrites another.
IBEX_TASK_RE = re.compile(r"ibex-(0|[1-9][0-9]{0,18})(?:\.([2-9]|[1-9][0-9]{1,5}))?")  # canonical: no leading 0


def ibex_task(ibex_id: int, run: int = 1) -> str:
    """The task id of run `run` (1 = the first) of ibex task `ibex_id`."""
    return f"ibex-{ibex_id}" if run == 1 else f"ibex-{ibex_id}.{run}"


def ibex_list_prefix(ibex_id: int) -> str:
    """A key prefix under which every run of ibex task `ibex_id` is (and tasks whose number starts with it:
    keep the keys whose task parse_ibex_task gives `ibex_id`)."""
    return f"logs/{ibex_task(ibex_id)}"


def parse_ibex_task(task: str) -> tuple[int, int] | None:
    """`ibex-N` -> (N, 1), `ibex-N.R` -> (N, R); None for a task id that is not an ibex task's."""
    m = IBEX_TASK_RE.fullmatch(task)
    if not m:
        return None
    return int(m.group(1)), int(m.group(2) or 1)


def parse_log_prefix(key: str) -> tuple[str, str] | None:
    """`logs/T/H/...` -> (T, H), or None for anything else."""
    parts = key.split("/")
    if len(parts) >= 4 and parts[0] == "logs" and ID_RE.fullmatch(parts[1]) and ID_RE.fullmatch(parts[2]):
        return parts[1], parts[2]
    return None


# --- the spool -------------------------------------------------------------------------
# <spool>/<task>/<host>/run.json         written by the agent at start (who, what, when, pid)
# <spool>/<task>/<host>/exit.json        written by the agent (or the watcher for a dead agent) at the end
# <spool>/<task>/<host>/NNNNNNNN.log.open / .idx.open   the open segment, appended to
# <spool>/<task>/<host>/NNNNNNNN.log / .idx              sealed: renamed from .open (index first)
# <spool>/<task>/<host>/shipped.json     the watcher's note that the store holds everything

RUN_FILE = "run.json"
EXIT_FILE = "exit.json"
SHIPPED_FILE = "shipped.json"
RUN_ID_ENV = "LOGSHIP_RUN_ID"  # in a task's environment: its run.json's run_id (shipper/liveness.py finds it by it)
LIVENESS_FILE = "liveness.json"  # <spool>/<task>/<host>/liveness.json: the agent's view of its task's processes
DROPPED_FILE = "dropped.json"  # <spool>/<task>/<host>/dropped.json: ranges the store will never have (shipper/quota.py)
WATCHER_STATE_FILE = ".watcher.json"  # <spool>/.watcher.json: the watcher's health and counters
OPEN_SUFFIX = ".open"
SEGMENT_RE = re.compile(r"(\d{8})\.log")


def spool_log_dir(spool: Path, task: str, host: str) -> Path:
    return spool / task / host


def spool_segment(log_dir: Path, seq: int, *, open_: bool = False) -> Path:
    return log_dir / (f"{seq:08d}.log" + (OPEN_SUFFIX if open_ else ""))


def spool_index(log_dir: Path, seq: int, *, open_: bool = False) -> Path:
    return log_dir / (f"{seq:08d}.idx" + (OPEN_SUFFIX if open_ else ""))
