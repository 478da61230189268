"""The `logship` command: parses arguments, loads the config, and hands off to one component.

Heavy modules (aiohttp, botocore, duckdb) are imported only by the commands that use them, so
`logship run` stays small and starts fast.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from typing import Any

from shipper.errors import LogshipError

EXIT_USAGE = 2


def _labels(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise LogshipError(f"bad --label {item!r}", "labels are key=value, e.g. --label team=infra")
        out[key] = value
    return out


def _count(value: str) -> int:
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number >= 0")
    return int(value)


def _log_flags(parser: argparse.ArgumentParser, default: Any) -> None:
    """--log-level and --log-format, before or after the command (a subcommand's SUPPRESS keeps the first)."""
    parser.add_argument("--log-level", metavar="LEVEL", default=default,
                        help="debug, info (default), warning or error; LOGGER=LEVEL pairs after a comma "
                        "(info,aiohttp.access=info) (default: logging.level)")
    parser.add_argument("--log-format", choices=["text", "json"], default=default,
                        help="text, or json lines for log collectors (default: logging.format)")


def _silence_flags(args: Any) -> tuple[str | None, str | None, str | None]:
    return args.silence_timeout, args.on_silence, args.silence_grace


def build_parser() -> argparse.ArgumentParser:
    # --config is accepted before or after the command; SUPPRESS keeps a subcommand's parser
    # from resetting a value given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="YAML config (default: ./logship.yaml if present, else built-in defaults)")
    _log_flags(common, argparse.SUPPRESS)
    p = argparse.ArgumentParser(prog="logship", description="Live and archived logs for long-running tasks.")
    p.add_argument("--config", metavar="FILE", dest="config_first", default=os.environ.get("LOGSHIP_CONFIG"),
                   help="YAML config (default: ./logship.yaml if present, else built-in defaults)")
    _log_flags(p, None)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    r = sub.add_parser("run", parents=[common], help="run a task and ship its output",
                       usage="logship run (--task T | --ibex) [--host H] [--label k=v]... [--merge-streams] "
                       "[--silence-timeout DURATION [--on-silence warn|kill] [--silence-grace DURATION]] "
                       "-- CMD [ARGS...]")
    which = r.add_mutually_exclusive_group(required=True)
    which.add_argument("--task")
    which.add_argument("--ibex", action="store_true",
                       help="a Nightingale ibex script: the task id comes from its path (docs/ibex.md)")
    r.add_argument("--host", help="default: this machine's hostname")
    r.add_argument("--label", action="append", default=[], metavar="K=V")
    r.add_argument("--merge-streams", action="store_true", default=None,
                   help="give the task one pipe for stdout and stderr, as 2>&1: lines keep the exact order they were "
                   "written in, but the split is lost (all stored and passed through as stdout). Without it, lines "
                   "of the two streams written close together (within ms; more on a busy machine) may swap "
                   "(default: agent.merge_streams)")
    r.add_argument("--silence-timeout", metavar="DURATION", help="no output for this long (e.g. 10m; 0: off) is a "
                   "silence event (default: agent.silence_timeout)")
    r.add_argument("--on-silence", metavar="warn|kill", help="warn: record it and say so on stderr; kill: TERM, "
                   "then KILL after --silence-grace, exit 124 (default: agent.on_silence)")
    r.add_argument("--silence-grace", metavar="DURATION", help="from TERM to KILL (default: agent.silence_grace)")
    r.add_argument("command", nargs=argparse.REMAINDER)

    w = sub.add_parser("watch", parents=[common], help="upload the spool to the store (one per host)")
    w.add_argument("--once", action="store_true", help="ship what is there now, then exit")
    w.add_argument("--check", action="store_true",
                   help="exit 0 if the running watcher is healthy, else 1 and say why (docs/operations.md)")
    w.add_argument("--max-age", metavar="DURATION", default="5m",
                   help="with --check: the longest since the watcher's last pass (default 5m)")
    w.add_argument("--max-failing", metavar="DURATION", default="2m",
                   help="with --check: the longest the store may fail (default 2m)")

    sv = sub.add_parser("serve", parents=[common], help="serve logs over HTTP (api.listen)")
    sv.add_argument("--check", action="store_true",
                    help="exit 0 if the running API and its store answer, else 1 and say why")

    c = sub.add_parser("cat", parents=[common], help="print a log from the store")
    c.add_argument("task")
    c.add_argument("--host", help="default: this machine's hostname if the task ran there, else its only host")
    c.add_argument("--stream", choices=["stdout", "stderr"])
    c.add_argument("--manifest", action="store_true", help="print the log's manifest instead")

    # tail and download talk to a running `logship serve`
    api = argparse.ArgumentParser(add_help=False)
    api.add_argument("--url", help="the API's base URL (default: http://<api.listen>); "
                     "the token comes from $LOGSHIP_TOKEN, else the first of api.tokens")
    t = sub.add_parser("tail", parents=[common, api], help="print the newest output of a log (-f: follow it)")
    t.add_argument("task")
    t.add_argument("--host", help="default: this machine's hostname if the task ran there, else its only host")
    t.add_argument("-f", "--follow", action="store_true", help="keep printing until the task ends")
    where = t.add_mutually_exclusive_group()
    where.add_argument("--from", dest="start", type=_count, metavar="OFFSET", help="start at this byte offset")
    where.add_argument("-n", "--lines", type=_count, metavar="N", help="start at the last N lines (default 10)")

    d = sub.add_parser("download", parents=[common, api], help="download a whole log (progress bar, resumes)")
    d.add_argument("task")
    d.add_argument("--host", help="default: this machine's hostname if the task ran there, else its only host")
    d.add_argument("-o", "--output", required=True, metavar="FILE",
                   help="resumed when FILE.logship-etag from an interrupted download is beside it")

    q = sub.add_parser("query", parents=[common], help="SQL over the archive (views lines and logs)")
    q.add_argument("sql")
    q.add_argument("--format", choices=["table", "csv", "json"], default="table")

    g = sub.add_parser("grep", parents=[common], help="find archived lines containing PATTERN (a literal)")
    g.add_argument("pattern")
    g.add_argument("-i", "--ignore-case", action="store_true")
    g.add_argument("--task")
    g.add_argument("--host")
    g.add_argument("--since", metavar="DURATION", help="only lines newer than this, e.g. 7d, 12h")
    g.add_argument("--stream", choices=["stdout", "stderr"])
    g.add_argument("--limit", type=int, default=1000, help="newest matches shown (default 1000)")

    gc = sub.add_parser("gc", parents=[common], help="delete whole logs older than a duration (retention)")
    gc.add_argument("--older-than", metavar="DURATION", help="e.g. 30d, 12h: since the log ended "
                    "(default: retention.older_than)")
    gc.add_argument("--status", metavar="LIST", help="finished,lost (default: retention.status); "
                    "running logs are never deleted")
    gc.add_argument("--label", action="append", default=[], metavar="K=V", help="only logs with this label")
    gc.add_argument("--dry-run", action="store_true", help="print what would be deleted, delete nothing")
    gc.add_argument("--no-wait", action="store_true", help="do not wait query.grace_seconds: the next run "
                    "finishes the logs hidden now")
    gc.add_argument("--sweep", action="store_true", help="read every manifest, not only the catalog's rows: "
                    "also finds logs the catalog does not know (slow; `logship catalog rebuild` repairs the catalog)")
    gc.add_argument("--lifecycle", action="store_true", help="print an S3 lifecycle configuration (JSON) that "
                    "expires objects by age instead")
    cp = sub.add_parser("compact", parents=[common], help="merge small query copies into larger Parquet parts")
    cp.add_argument("--no-wait", action="store_true", help="do not wait to delete what the new parts replace: "
                    "the next run deletes it")

    sub.add_parser("config", parents=[common], help="print the effective config")
    from shipper.commands import catalog

    catalog.add_parsers(sub, common)  # ls, catalog rebuild|check|compact

    s = sub.add_parser("s3", parents=[common], help="the local SeaweedFS S3 server for development and tests")
    s.add_argument("action", choices=["start", "stop", "env"])
    s.add_argument("--dir", default="./.logship/s3")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not hasattr(args, "config"):
        args.config = args.config_first
    try:
        return _dispatch(args)
    except LogshipError as exc:
        from shipper import logs

        logs.command_failed(exc)
        return EXIT_USAGE if args.cmd != "run" else 125
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `logship ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _dispatch(args: Any) -> int:
    from shipper import logs
    from shipper.config import load_config

    logs.setup_from(args.log_level, args.log_format)  # from the flags now, so config errors obey --log-format
    if args.cmd == "s3":
        from shipper.commands import s3local

        return s3local.main([args.action, "--dir", args.dir])
    if args.cmd == "run" and args.ibex:  # the task id comes from the script's path (docs/ibex.md)
        from shipper.commands import ibex

        return ibex.run(args.config, args.host, args.command[1:] if args.command[:1] == ["--"] else args.command,
                        _labels(args.label), silence=_silence_flags(args), merge_streams=args.merge_streams)
    cfg = load_config(args.config)
    logs.setup_from(args.log_level, args.log_format, cfg.logging)
    if args.cmd == "config":
        from shipper.commands import show_config

        sys.stdout.write(show_config.render(cfg, os.environ))
        return 0
    if args.cmd == "run":
        return _run(cfg, args)
    if args.cmd in ("watch", "serve") and args.check:
        from shipper.commands import check

        return check.main(cfg, args)
    if args.cmd == "serve":
        from api import server

        return server.main(cfg)
    if args.cmd == "cat":
        import asyncio

        return asyncio.run(_cat(cfg, args))
    if args.cmd in ("query", "grep"):
        from shipper.commands import query

        return query.run_query(cfg, args.sql, args.format) if args.cmd == "query" else query.run_grep(cfg, args)
    if args.cmd == "watch":
        from shipper import watcher
        from shipper.retention import maintenance

        # retention and compaction run beside the shipping, on their schedule, when configured
        return watcher.main(cfg, once=args.once, alongside=functools.partial(maintenance.start, cfg))
    if args.cmd == "gc":
        from shipper.retention import gc

        return gc.main(cfg, args)
    if args.cmd == "compact":
        from shipper.query import compact

        return compact.main(cfg, args)
    if args.cmd in ("ls", "catalog"):
        from shipper.commands import catalog

        return catalog.main(cfg, args)
    if args.cmd in ("tail", "download"):
        from shipper.commands import client

        return client.main(cfg, args)
    raise AssertionError(args.cmd)


def _run(cfg: Any, args: Any) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise LogshipError("no command to run", "usage: logship run --task T -- CMD [ARGS...]")
    from shipper import agent

    silence = None
    if any(_silence_flags(args)) or cfg.agent.silence_timeout:  # else the task does not wait for the import
        from shipper.liveness import policy_for

        silence = policy_for(cfg.agent, *_silence_flags(args))
    return agent.run(cfg, args.task, args.host, command, _labels(args.label), silence=silence,
                     merge_streams=args.merge_streams)


async def _cat(cfg: Any, args: Any) -> int:
    from shipper.agent import default_host
    from shipper.format import names
    from shipper.format.reader import LogNotFound, Reader
    from shipper.store import open_store

    task, host = names.check_id("task", args.task), names.check_id("host", args.host or default_host())
    store = open_store(cfg.store)
    try:
        reader = Reader(store, hold_unchecked=True)  # no byte of a part before it is checked
        try:
            view = await reader.view(task, host)
        except LogNotFound:  # no log there: the task's only host, or an error naming its hosts
            from shipper.commands.hosts import store_host

            host = await store_host(store, cfg.store.url, f"logship cat {task}", task, args.host, host)
            view = await reader.view(task, host)
        out = sys.stdout.buffer
        if args.manifest:
            assert view.doc is not None  # a reader without a spool has a view only of a manifest
            out.write(view.doc.dump() + b"\n")
            return 0
        async for data in reader.read_whole(view, args.stream):
            out.write(data)
        out.flush()
        return 0
    finally:
        await store.close()


if __name__ == "__main__":
    sys.exit(main())
