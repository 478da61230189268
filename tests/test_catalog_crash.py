"""kill -9 of `logship catalog rebuild` and `logship catalog compact` at random moments: the next run
repairs everything, and no listing in between misses a row; plus the commands' output and exit codes."""

from __future__ import annotations

import json
import random
import secrets
import subprocess
import time
from typing import Any

from shipper import catalog
from shipper.catalog import Filters
from shipper.config import Config
from shipper.format import manifest, names
from shipper.format.manifest import Manifest
from shipper.store import Store, open_store

from .support import LOGSHIP, MakeConfig, agent_env

DAY = 86_400 * 10**9
BASE = (time.time_ns() // DAY - 2) * DAY


async def fill(store: Store, n: int, *, note: bool, first: int = 0) -> dict[tuple[str, str], Manifest]:
    """`n` logs (manifests; with `note`, the records a watcher writes too), 1 in 10 running; numbered from
    `first`."""
    docs = {}
    writer = catalog.Writer(store)
    for i in range(first, first + n):
        task, host = f"task-{i:05d}", f"h{i % 5}"
        run: dict[str, Any] = {"task": task, "host": host, "run_id": secrets.token_hex(16),
               "started_ns": BASE + i * (2 * DAY // n), "command": ["job", str(i)], "labels": {"n": str(i % 3)}}
        status = manifest.RUNNING if i % 10 == 0 else manifest.FINISHED
        doc = Manifest.build(run, None if status == manifest.RUNNING else {"exit_code": 0, "ended_ns": 1}, status,
                             [], None, [], "zstd")
        await store.put(names.manifest_key(task, host), doc.dump())
        if note:
            await writer.note(doc)
        docs[(task, host)] = doc
    return docs


def expected(docs: dict[tuple[str, str], Manifest], f: Filters) -> list[dict[str, Any]]:
    got = sorted((catalog.rows.from_manifest(d) for d in docs.values()), key=lambda r: r.order)
    return [r.listing() for r in got if f.fixed(r) and f.final(r)]


async def everything(cfg: Config, f: Filters) -> list[dict[str, Any]]:
    store = open_store(cfg.store)  # a fresh reader, as a new process would be
    try:
        out: list[dict[str, Any]] = []
        cursor = None
        while True:
            page, cursor = await catalog.list_logs(store, f, cursor, 1000)
            out += page
            if cursor is None:
                return out
    finally:
        await store.close()


def cli(cfg: Config, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LOGSHIP, *args], env={**agent_env(cfg), **env}, capture_output=True, text=True,
                          timeout=600)


def kill_at_progress(cfg: Config, args: list[str], extra: float) -> bool:
    """Start `logship ARGS`, kill -9 it `extra` seconds after its first progress line; whether it was killed
    (False: it ended first)."""
    p = subprocess.Popen([*LOGSHIP, *args], env=agent_env(cfg), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True)
    try:
        assert p.stderr is not None
        for line in p.stderr:
            if line.startswith("rebuild: "):
                break
        try:
            p.wait(extra)
            return False
        except subprocess.TimeoutExpired:
            p.kill()
            return True
    finally:
        p.kill()
        p.wait()


def kill_after(cfg: Config, args: list[str], seconds: float, **env: str) -> int | None:
    """Start `logship ARGS`, kill -9 it after `seconds` (unless it ended); its exit code."""
    p = subprocess.Popen([*LOGSHIP, *args], env={**agent_env(cfg), **env}, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        return p.wait(seconds)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        return None


async def test_kill_9_during_rebuild(make_config: MakeConfig) -> None:
    cfg = make_config(LOGSHIP_QUERY_GRACE_SECONDS="0")
    store = open_store(cfg.store)
    try:
        docs = await fill(store, 1500, note=False)
    finally:
        await store.close()
    r = random.Random(13)
    killed = 0
    last = False
    for _ in range(3):  # each run saves a position or more, then dies anywhere
        last = kill_at_progress(cfg, ["catalog", "rebuild", "--batch", "50"], r.uniform(0.0, 0.2))
        killed += last
    assert killed, "the rebuild ended before any kill: make the archive larger"
    done = cli(cfg, "catalog", "rebuild", "--batch", "50")
    assert done.returncode == 0, done.stderr
    assert ("resumed after" in done.stdout) == last  # a run that ended leaves nothing to resume
    assert "logs/s" in done.stderr  # progress
    for f in (Filters(), Filters(status="running"), Filters(host="h2")):
        assert await everything(cfg, f) == expected(docs, f)
    chk = cli(cfg, "catalog", "check", "--json")
    assert chk.returncode == 0, chk.stdout
    assert json.loads(chk.stdout)["clean"]
    again = cli(cfg, "catalog", "rebuild")  # idempotent: a finished rebuild run again changes no row
    assert again.returncode == 0 and "resumed" not in again.stdout
    assert await everything(cfg, Filters()) == expected(docs, Filters())


async def test_kill_9_during_compaction(make_config: MakeConfig) -> None:
    cfg = make_config(LOGSHIP_QUERY_GRACE_SECONDS="0")
    store = open_store(cfg.store)
    try:
        docs = await fill(store, 600, note=True)
        writer = catalog.Writer(store)
        for key in list(docs)[::20]:  # some end, so compaction also clears running/ entries
            if docs[key].status == manifest.RUNNING:
                docs[key] = docs[key].replace(status=manifest.FINISHED, exit_code=3, updated_ns=time.time_ns())
                await store.put(names.manifest_key(*key), docs[key].dump())
                await writer.note(docs[key])
    finally:
        await store.close()
    r = random.Random(7)
    killed, hi = 0, 2.0
    for _ in range(6):
        began = time.monotonic()
        if kill_after(cfg, ["catalog", "compact"], r.uniform(0.3, hi)) is None:
            killed += 1
        else:  # it finished first (a quiet machine): new records to compact, and the next kill comes sooner
            hi = max(0.35, 0.8 * (time.monotonic() - began))
            store = open_store(cfg.store)
            try:
                docs.update(await fill(store, 300, note=True, first=len(docs)))
            finally:
                await store.close()
        # after every kill, wherever it hit, no row is missing and none is shown twice
        assert await everything(cfg, Filters()) == expected(docs, Filters())
        assert await everything(cfg, Filters(status="running")) == expected(docs, Filters(status="running"))
    assert killed, "compaction ended before any kill"
    for _ in range(2):
        done = cli(cfg, "catalog", "compact")
        assert done.returncode == 0, done.stderr
    chk = cli(cfg, "catalog", "check")
    assert chk.returncode == 0, chk.stdout
    store = open_store(cfg.store)
    try:
        head = await catalog.Reader(store).head()
        assert not head.pairs, "every record was folded and deleted"
        assert [o.key for o in await store.list(names.CATALOG_RUNNING)] == sorted(
            names.catalog_running_key(catalog.rows.running_name(catalog.rows.from_manifest(d)))
            for d in docs.values() if d.status == manifest.RUNNING)
    finally:
        await store.close()


async def test_ls_and_check_commands(make_config: MakeConfig) -> None:
    cfg = make_config(LOGSHIP_QUERY_GRACE_SECONDS="0")
    store = open_store(cfg.store)
    try:
        docs = await fill(store, 30, note=True)
        # a log the catalog does not know (written by an older watcher): check finds it, --repair adds it
        extra = next(iter(docs.values())).replace(task="older", run_id=secrets.token_hex(16))
        await store.put(names.manifest_key("older", extra.host), extra.dump())
    finally:
        await store.close()
    out = cli(cfg, "ls", "--json", "--limit", "7", "--label", "n=1")
    assert out.returncode == 0, out.stderr
    page = json.loads(out.stdout)
    assert page["logs"] == expected(docs, Filters(labels=(("n", "1"),)))[:7] and page["next_cursor"]
    nxt = cli(cfg, "ls", "--json", "--limit", "7", "--label", "n=1", "--cursor", page["next_cursor"])
    assert json.loads(nxt.stdout)["logs"] == expected(docs, Filters(labels=(("n", "1"),)))[7:14]
    table = cli(cfg, "ls", "--status", "running", "--host", "h0", "--since", "30d")
    assert table.returncode == 0 and table.stdout.splitlines()[0].startswith("STARTED")
    assert len(table.stdout.splitlines()) == 1 + len(expected(docs, Filters(status="running", host="h0")))
    for bad in (["ls", "--since", "yesterday"], ["ls", "--label", "novalue"], ["ls", "--host", "a/b"],
                ["ls", "--cursor", "x"]):
        res = cli(cfg, *bad)
        assert res.returncode == 2 and res.stderr.startswith("logship: "), (bad, res.stderr)
    chk = cli(cfg, "catalog", "check")
    assert chk.returncode == 1 and "missing: older/" in chk.stdout
    assert cli(cfg, "catalog", "check", "--repair").returncode == 1
    assert cli(cfg, "catalog", "check").returncode == 0
    assert "older" in cli(cfg, "ls", "--task", "older").stdout
