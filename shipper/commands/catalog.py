"""`logship ls` and `logship catalog rebuild|check|compact`: the catalog read and kept straight from the store."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import TYPE_CHECKING, Any

from shipper.errors import LogshipError
from shipper.format import names

if TYPE_CHECKING:
    from shipper.config import Config

EXIT_DIFFERS = 1


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    ls = sub.add_parser("ls", parents=[common], help="list logs, newest first (from the store's catalog)")
    ls.add_argument("--status", choices=["running", "finished", "lost"])
    ls.add_argument("--since", metavar="TIME", help="started at or after: 90m, 12h, 7d, a date or an RFC 3339 time")
    ls.add_argument("--until", metavar="TIME", help="started before this time (same forms as --since)")
    ls.add_argument("--host")
    ls.add_argument("--task")
    ls.add_argument("--label", action="append", default=[], metavar="K=V", help="repeatable; all must match")
    ls.add_argument("--limit", type=int, default=50, help="rows per page (default 50, at most 1000)")
    ls.add_argument("--cursor", metavar="C", help="the page after this one (printed at the end of a page)")
    ls.add_argument("--json", action="store_true", help="one JSON document: logs and next_cursor")
    c = sub.add_parser("catalog", parents=[common], help="rebuild, check or compact the catalog of logs")
    c.add_argument("action", choices=["rebuild", "check", "compact"])
    c.add_argument("--fresh", action="store_true", help="rebuild: start over instead of resuming")
    c.add_argument("--batch", type=int, default=20_000, help="rebuild: manifests per saved position")
    c.add_argument("--repair", action="store_true", help="check: write what the catalog lacks, from the manifests")
    c.add_argument("--json", action="store_true", help="check: the report as JSON")


def main(cfg: Config, args: Any) -> int:
    return asyncio.run(_main(cfg, args))


async def _main(cfg: Config, args: Any) -> int:
    from shipper.store import open_store

    store = open_store(cfg.store)
    try:
        if args.cmd == "ls":
            return await _ls(store, args)
        if args.action == "rebuild":
            return await _rebuild(store, args, cfg.query.grace_seconds)
        if args.action == "check":
            return await _check(store, args)
        from shipper.catalog import Compactor, Settings

        st = await Compactor(store, Settings(grace_s=cfg.query.grace_seconds)).run()
        print(f"folded {st.records} records into {st.parts_written} parts ({st.rows_written} rows); finished "
              f"{st.finished} parts; deleted {st.deleted} objects; {st.summaries} summaries written"
              + (f"; {len(st.bad)} bad objects left alone" if st.bad else ""))
        return 0
    finally:
        await store.close()


def _time(flag: str, value: str | None) -> int | None:
    from api.params import TIME_HINT, parse_time

    if value is None:
        return None
    t = parse_time(value)
    if t is None:
        raise LogshipError(f"{flag} {value!r} is not a time", TIME_HINT)
    return t


def filters_of(args: Any) -> Any:
    from shipper.catalog import Filters

    labels = []
    for item in args.label:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise LogshipError(f"bad --label {item!r}", "labels are key=value, e.g. --label team=infra")
        labels.append((k, v))
    return Filters(since=_time("--since", args.since), until=_time("--until", args.until), status=args.status,
                   host=names.check_id("host", args.host) if args.host else None,
                   task=names.check_id("task", args.task) if args.task else None, labels=tuple(labels))


def _cursor(value: str | None) -> tuple[int, str, str] | None:
    if value is None:
        return None
    ns, _, rest = value.partition("~")
    task, _, host = rest.partition("~")
    if not ns.isdigit() or not names.ID_RE.fullmatch(task) or not names.ID_RE.fullmatch(host):
        raise LogshipError(f"--cursor {value!r} is not one logship printed", "pass the cursor of the previous page")
    return int(ns), task, host


async def _ls(store: Any, args: Any) -> int:
    from shipper.catalog import list_logs

    if not 1 <= args.limit <= 1000:
        raise LogshipError(f"--limit {args.limit} is out of range", "use 1 to 1000")
    rows, nxt = await list_logs(store, filters_of(args), _cursor(args.cursor), args.limit)
    cursor = f"{nxt[0]}~{nxt[1]}~{nxt[2]}" if nxt else None
    if args.json:
        json.dump({"logs": rows, "next_cursor": cursor}, sys.stdout)
        sys.stdout.write("\n")
        return 0
    head = ("STARTED (UTC)", "TASK", "HOST", "STATUS", "EXIT", "SIZE", "LABELS")
    table = [head] + [(time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r["started_ns"] // 10**9)), r["task"],
                       r["host"], r["status"], "" if r["exit_code"] is None else str(r["exit_code"]),
                       "" if r["size"] is None else str(r["size"]),
                       ",".join(f"{k}={v}" for k, v in sorted(r["labels"].items()))) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    if cursor:
        print(f"more: logship ls ... --cursor {cursor}", file=sys.stderr)
    return 0


async def _rebuild(store: Any, args: Any, grace_s: float) -> int:
    from shipper.catalog import rebuild

    def progress(p: Any) -> None:
        rate = (p.done - p.resumed_count) / p.seconds if p.seconds else 0.0
        left = (p.total - p.done) / rate if rate else 0.0
        print(f"rebuild: {p.done}/{p.total} manifests, {p.rows} rows, {p.parts} parts, {rate:.0f} logs/s"
              + (f", about {left:.0f} s left" if p.done < p.total else ""), file=sys.stderr, flush=True)

    p = await rebuild(store, batch=max(1, args.batch), fresh=args.fresh, progress=progress, grace_s=grace_s)
    for line in p.bad:
        print(f"bad manifest, left out: {line}", file=sys.stderr)
    print(f"rebuilt the catalog from {p.done} manifests ({p.rows} rows, {p.running} running, {len(p.bad)} bad) "
          f"in {p.seconds:.1f} s" + (f"; resumed after {p.resumed_after}" if p.resumed_after else ""))
    return 0


async def _check(store: Any, args: Any) -> int:
    from dataclasses import asdict

    from shipper.catalog import check

    rep = await check(store, repair=args.repair)
    if args.json:
        json.dump({**asdict(rep), "clean": rep.clean}, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        for what in ("missing", "stale", "ahead", "extra", "stale_running", "bad"):
            for line in getattr(rep, what):
                print(f"{what}: {line}")
        print(f"{rep.manifests} manifests, {rep.rows} rows, {rep.records} uncompacted records: "
              + ("the catalog agrees with the manifests" if rep.clean else "differences above"
                 + ("; repaired what the manifests say" if args.repair else " (--repair writes them)")))
    return 0 if rep.clean else EXIT_DIFFERS
