"""`logship query` and `logship grep`: SQL and search over the archive, read directly from the store."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from shipper.config import Config
from shipper.config_values import parse_duration
from shipper.errors import LogshipError
from shipper.query.engine import Database
from shipper.query.search import Search


def run_query(cfg: Config, sql: str, fmt: str) -> int:
    from shipper.query import formats

    db = Database(cfg)
    try:
        result = db.execute(sql)
        out = sys.stdout
        if fmt == "table":
            for piece in formats.table(result):
                out.write(piece)
        else:
            for data in formats.encode(result, fmt):
                out.buffer.write(data)
        out.flush()
        if result.truncated and fmt != "table":
            print(f"logship: the answer was cut at {result.rows} rows (query.max_rows); add LIMIT or raise it",
                  file=sys.stderr)
        for key, problem in result.skipped:
            print(f"logship: {key} left out of the logs view: {problem} (hint: `logship catalog check` compares "
                  "the catalog with the manifests; `logship catalog rebuild` repairs it)", file=sys.stderr)
        return 0
    finally:
        db.close()


def run_grep(cfg: Config, args: Any) -> int:
    """Matches, oldest first, as `task/host:line_no: line`; exit 1 when nothing matched, like grep."""
    from shipper.format import names

    if args.limit < 1:
        raise LogshipError(f"--limit {args.limit} is not allowed", "show at least 1 match, e.g. --limit 100")
    search = Search(args.pattern, ignore_case=args.ignore_case,
                    task=names.check_id("task", args.task) if args.task else None,
                    host=names.check_id("host", args.host) if args.host else None,
                    since_ns=_since(args.since) if args.since else None, stream=args.stream, limit=args.limit)
    db = Database(cfg)
    try:
        result = db.execute(search.sql())
        hits = [json.loads(obj) for batch in result.fetch_json() for obj in batch]
    finally:
        db.close()
    more = len(hits) > search.limit
    hits = hits[:search.limit]
    out = sys.stdout
    for h in reversed(hits):  # newest N first from the query; shown oldest first
        out.write(f"{h['task']}/{h['host']}:{h['line_no']}: {h['line']}\n")
    out.flush()
    if more:
        print(f"logship: showing the newest {search.limit} matches; there are more (use --limit or narrow it)",
              file=sys.stderr)
    if not hits and search.task:
        _check_task_has_log(cfg, args.pattern, search.task, search.host)
    return 0 if hits else 1


def _check_task_has_log(cfg: Config, pattern: str, task: str, host: str | None) -> None:
    """Nothing matched in `task` (on `host`): an error when it has no log there at all, so that a wrong id
    never reads as "no match" (exit 1). Only then does it cost anything: a HEAD, or a delimited LIST of the
    task's prefix and a HEAD or two. Logs in the local spool count too (they reach the archive later)."""
    import asyncio
    import shlex

    from shipper.format.hosts import has_log, hosts_of
    from shipper.spool.logs import iter_logs
    from shipper.store import open_store

    from .hosts import MAX_NAMED, pick

    spooled = {d.name for d in iter_logs(cfg.spool_dir) if d.parent.name == task}
    if spooled if host is None else host in spooled:
        return

    async def find() -> tuple[list[str], int]:
        store = open_store(cfg.store)
        try:
            if host is not None and await has_log(store, task, host):
                return [host], 0
            found = await hosts_of(store, task, want=1 if host is None else MAX_NAMED + 1)
            return found.hosts, found.unchecked
        finally:
            await store.close()

    hosts, more = asyncio.run(find())
    if hosts if host is None else host in hosts:
        return
    pick(f"logship grep {shlex.quote(pattern)} --task {task}", task, host, host or "", sorted({*hosts, *spooled}),
         more, f" in {cfg.store.url}", "check the task id (ids are case-sensitive); `logship grep` searches "
         "the logs `logship watch` shipped to the store")


def _since(text: str) -> int:
    try:
        return time.time_ns() - int(parse_duration(text) * 1e9)
    except ValueError:
        raise LogshipError(f"--since {text!r} is not a duration", "use e.g. 30m, 12h or 7d") from None
