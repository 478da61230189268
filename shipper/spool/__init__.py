"""The spool: a log's segments on local disk, written by the agent and read by the watcher and API.

Layout: shipper/format/names.py. The package, by idea:
- files.py      spool files opened safely (no symbolic link followed), written atomically, read with a limit
- writer.py     the agent's side: appending to the open segment (`N.log.open` + `N.idx.open`) and sealing it
- logs.py       reading the spool: the logs it holds, run.json and exit.json checked, whether an agent runs
- cache.py      those JSON files read again only when they changed (the watcher's passes)
- integrity.py  a segment's index checked against its bytes; a dead agent's open segment recovered

Callers import from `shipper.spool`; the names below are its whole interface.
"""

from .cache import JsonCache
from .files import (
    DAMAGE_HINT,
    DIR_FLAGS,
    JSON_MAX,
    NOFOLLOW,
    SpoolDamaged,
    fsync_dir,
    make_log_dir,
    open_child_dir,
    open_log_dir,
    read_file,
    read_json,
    write_atomic,
    write_json_atomic,
)
from .integrity import (
    DAMAGED,
    MAX_GAP,
    MISSING,
    QUOTA,
    SegmentCheck,
    check_segment,
    lost_range,
    recover_open_segment,
    segment_end,
)
from .logs import RUN_ID_RE, SpoolLog, agent_alive, check_exit, check_run, iter_logs, pid_start_ticks, read_log
from .writer import SegmentWriter, seal

__all__ = [
    "DAMAGED", "DAMAGE_HINT", "DIR_FLAGS", "JSON_MAX", "JsonCache", "MAX_GAP", "MISSING", "NOFOLLOW", "QUOTA",
    "RUN_ID_RE",
    "SegmentCheck", "SegmentWriter", "SpoolDamaged", "SpoolLog", "agent_alive", "check_exit", "check_run",
    "check_segment", "fsync_dir", "iter_logs", "lost_range", "make_log_dir", "open_child_dir", "open_log_dir",
    "pid_start_ticks", "read_file", "read_json", "read_log", "recover_open_segment", "seal", "segment_end",
    "write_atomic", "write_json_atomic",
]
