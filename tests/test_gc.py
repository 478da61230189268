"""Retention: logship gc deletes exactly the logs it should, never a running one, and a gc killed half-way
leaves no log half-visible in the API or SQL and is finished by the next run."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from api.app import create_app
from shipper import catalog
from shipper.config import Config
from shipper.format import names, reader
from shipper.format.manifest import Manifest
from shipper.query.engine import Database
from shipper.store import open_store
from shipper.watcher import watch

from .support import (
    LOGSHIP,
    MakeConfig,
    agent_env,
    kill_task,
    logship_killed_after_deletes,
    run_agent,
    spooled,
    start_agent,
    start_watcher,
    stop_agent,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

NOW = {"LOGSHIP_QUERY_GRACE_SECONDS": "0"}
DAY = 86400 * 10**9
LINES = ("SELECT task, host, seq, line_no, stream, byte_offset, line FROM lines "
         "ORDER BY task, host, seq, line_no, stream")
TICKER = "import time\nwhile True:\n    print('tick', flush=True)\n    time.sleep(0.05)\n"


def run(cfg: Config, task: str, *labels: str, lines: int = 30) -> None:
    script = f'for i in $(seq 1 {lines}); do echo "$0 out $i"; echo "$0 err $i" >&2; done'
    res = run_agent(cfg.spool_dir, task, ["sh", "-c", script, task], env=agent_env(cfg),
                    args=[a for label in labels for a in ("--label", label)])
    assert res.returncode == 0, res.stderr


async def age(cfg: Config, task: str, days: float) -> None:
    """Make a log look as if it ended `days` ago (we cannot wait for it)."""
    store = open_store(cfg.store)
    try:
        key = names.manifest_key(task, "h1")
        doc = Manifest.load(await store.get(key))
        then = time.time_ns() - int(days * DAY)
        doc = doc.replace(started_ns=then - 60 * 10**9, updated_ns=then, ended_ns=then if doc.ended_ns else None)
        await store.put(key, doc.dump())
        # A run's start never changes in life: its catalog rows are those of the aged manifest only.
        await store.delete([o.key for o in await store.list(names.CATALOG_PREFIX) if f"~{task}~h1~" in o.key])
        await catalog.Writer(store).note(doc)
    finally:
        await store.close()


async def keys(cfg: Config) -> dict[str, int]:
    store = open_store(cfg.store)
    try:
        return {o.key: o.size for o in await store.list("")}
    finally:
        await store.close()


def gc(cfg: Config, *args: str, kill_after_deletes: int | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    cmd = LOGSHIP if kill_after_deletes is None else logship_killed_after_deletes(kill_after_deletes)
    return subprocess.run([*cmd, "gc", *args], env={**agent_env(cfg), **env}, capture_output=True, text=True,
                          timeout=300)


def sql(cfg: Config, query: str) -> list[tuple[Any, ...]]:
    db = Database(cfg)
    try:
        return [tuple(json.loads(o).values()) for batch in db.execute(query).fetch_json() for o in batch]
    finally:
        db.close()


async def visible(cfg: Config) -> dict[str, Any]:
    """What every reader shows: the API's listing, each log's route and bytes, the `logs` view, `lines`."""
    client = TestClient(TestServer(create_app(cfg, serve_spool=False)))
    await client.start_server()
    store = open_store(cfg.store)
    try:
        listing = (await (await client.get("/api/v1/tasks", params={"limit": "1000"})).json())["logs"]
        tasks = sorted(r["task"] for r in listing)
        routes = {}
        for task in sorted({*tasks, *DOOMED, *KEPT}):
            meta = await client.get(f"/api/v1/tasks/{task}/hosts/h1")
            log = await client.get(f"/api/v1/tasks/{task}/hosts/h1/log")
            body = await log.read()
            routes[task] = (meta.status, log.status, hashlib.sha256(body).hexdigest() if log.status == 200 else "")
            if log.status == 200:
                assert body == await reader.read_all(store, task, "h1")
    finally:
        await store.close()
        await client.close()
    return {"listing": tasks, "routes": routes, "logs": sql(cfg, "SELECT task, status FROM logs ORDER BY task"),
            "lines": sql(cfg, LINES)}


DOOMED = ("old-a", "old-lost")
KEPT = ("old-b", "new-a", "running")


@pytest.fixture
async def archive_of_logs(make_config: MakeConfig) -> Any:
    """Five logs: old and finished (team a, team b), old and lost, new and finished, old and running;
    their query copies compacted into one part, so deleting a log rewrites the part too."""
    cfg = make_config(**NOW)
    run(cfg, "old-a", "team=a")
    run(cfg, "old-b", "team=b")
    run(cfg, "new-a", "team=a")
    lost = start_agent(cfg.spool_dir, "old-lost", ["sh", "-c", "echo lost; sleep 60"], env=agent_env(cfg))
    running = start_agent(cfg.spool_dir, "running", [sys.executable, "-c", TICKER], env=agent_env(cfg),
                          stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30  # a loaded machine may take a while to start the agent and its task
        while ((b"lost" not in _spooled(cfg.spool_dir, "old-lost") or not _spooled(cfg.spool_dir, "running"))
               and time.monotonic() < deadline):
            time.sleep(0.05)
        kill_task(cfg.spool_dir, "old-lost")
        lost.send_signal(signal.SIGKILL)
        lost.wait()
        await watch(cfg, once=True)
        for task in ("old-a", "old-b", "old-lost", "running"):
            await age(cfg, task, 10)
        assert sql(cfg, "SELECT task, status FROM logs ORDER BY task") == [
            ("new-a", "finished"), ("old-a", "finished"), ("old-b", "finished"), ("old-lost", "lost"),
            ("running", "running")]
        res = subprocess.run([*LOGSHIP, "compact"], env=agent_env(cfg), capture_output=True, text=True, timeout=120)
        assert res.returncode == 0 and "compacted 4 objects" in res.stdout, res.stdout + res.stderr
        yield cfg
    finally:
        stop_agent(running, cfg.spool_dir, "running")


def _spooled(spool: Path, task: str) -> bytes:
    try:
        return spooled(spool, task)
    except FileNotFoundError:  # not started yet
        return b""


async def test_gc_deletes_exactly_the_logs_it_should(archive_of_logs: Config) -> None:
    cfg = archive_of_logs
    before = await visible(cfg)
    assert before["listing"] == sorted(DOOMED + KEPT)
    objects = await keys(cfg)

    res = gc(cfg, "--older-than", "7d", "--dry-run")
    assert res.returncode == 0, res.stderr
    assert [line.split(":")[0] for line in res.stdout.splitlines()[:-1]] == [
        "would delete old-a/h1", "would delete old-b/h1", "would delete old-lost/h1"]
    assert "would delete 3 logs" in res.stdout and await keys(cfg) == objects

    res = gc(cfg, "--older-than", "7d", "--label", "team=a", "--status", "finished")  # old-a only
    assert res.returncode == 0, res.stderr
    after = await keys(cfg)
    gone = {k for k in objects.keys() - after.keys() if not k.startswith("live/")}  # live/: snapshots replaced
    log_objects = {k for k in objects if "old-a" in k and not k.startswith(names.CATALOG_PREFIX)}
    assert {k for k in gone if not k.startswith("compact/")} == log_objects  # catalog rows: its tombstone
    assert not [k for k in after if "old-a" in k and not k.startswith(names.CATALOG_PREFIX)]
    # it counts what it removed: the log's objects, the part rewritten without it, and its marker
    assert f"deleted 1 logs: {len(gone) + 1} objects" in res.stdout, res.stdout
    assert "1 compacted parts rewritten" in res.stdout
    now = await visible(cfg)
    assert now["listing"] == sorted(("old-lost",) + KEPT) and now["routes"]["old-a"][:2] == (404, 404)
    assert now["lines"] == [r for r in before["lines"] if r[0] != "old-a"]
    assert {t: now["routes"][t] for t in KEPT} == {t: before["routes"][t] for t in KEPT}

    assert gc(cfg, "--older-than", "7d", "--status", "lost").returncode == 0
    assert (await visible(cfg))["listing"] == sorted(KEPT)

    res = gc(cfg, "--older-than", "0s")  # everything that has ended, however recent: never the running log
    assert res.returncode == 0 and "deleted 2 logs" in res.stdout, res.stdout
    end = await visible(cfg)
    assert end["listing"] == ["running"] and end["logs"] == [("running", "running")]
    assert end["routes"]["running"] == before["routes"]["running"][:2] + (end["routes"]["running"][2],)
    assert {r[0] for r in end["lines"]} <= {"running"}
    left = await keys(cfg)
    assert {k.split("/")[0] for k in left} <= {"logs", "lines", "compact", "live", "catalog"}
    assert all("running" in k for k in left if k.startswith("logs/"))
    assert not [k for k in left if k.startswith("deleting/")]


async def test_a_gc_killed_half_way_is_finished_by_the_next_run(archive_of_logs: Config) -> None:
    cfg = archive_of_logs
    for task in DOOMED:  # the old and lost one is doomed by its status; old-a by its label
        assert task in (await visible(cfg))["listing"]
    before = await visible(cfg)
    args = ["--older-than", "7d", "--label", "team=a"]
    lost = ["--older-than", "7d", "--status", "lost"]
    for crash_after, what in ((1, args), (3, args), (2, lost)):
        res = gc(cfg, *what, kill_after_deletes=crash_after)
        assert res.returncode == -signal.SIGKILL, (res.stdout, res.stderr)  # killed -9 by its store
        _nothing_half_visible(await visible(cfg), before, doomed={"old-a"} | ({"old-lost"} if what is lost else set()))
        assert [k for k in await keys(cfg) if k.startswith("deleting/")]
    res = gc(cfg, "--older-than", "7d", "--label", "nobody=matches")  # a run that selects nothing new...
    assert res.returncode == 0 and "resumed old-a/h1" in res.stdout and "resumed old-lost/h1" in res.stdout
    assert "deleted 2 logs" in res.stdout  # ...finishes what the killed ones began
    _nothing_half_visible(await visible(cfg), before, doomed=set(DOOMED))
    left = await keys(cfg)
    assert not [k for k in left if any(t in k for t in DOOMED) and not k.startswith(names.CATALOG_PREFIX)]
    assert not [k for k in left if k.startswith("deleting/")]


def _nothing_half_visible(now: dict[str, Any], before: dict[str, Any], doomed: set[str]) -> None:
    """Doomed logs are nowhere; every other log is exactly as it was."""
    assert now["listing"] == [t for t in before["listing"] if t not in doomed]
    for task in doomed:
        assert now["routes"][task][:2] == (404, 404)
    for task in KEPT:
        if task != "running":  # it keeps writing
            assert now["routes"][task] == before["routes"][task]
    assert now["logs"] == [r for r in before["logs"] if r[0] not in doomed]
    assert now["lines"] == [r for r in before["lines"] if r[0] not in doomed]


async def test_gc_hides_a_log_at_once_and_deletes_it_after_the_grace_period(make_config: MakeConfig) -> None:
    cfg = make_config(LOGSHIP_QUERY_GRACE_SECONDS="600")
    run(cfg, "soon-gone")
    run(cfg, "stays")
    await watch(cfg, once=True)
    res = gc(cfg, "--older-than", "0s", "--label", "x=", "--no-wait")
    assert res.returncode == 0 and "deleted 0 logs" in res.stdout  # no log has the label x with an empty value
    objects = await keys(cfg)
    res = gc(cfg, "--older-than", "0s", "--no-wait")
    assert res.returncode == 0 and "2 logs hidden now, finished by the next run" in res.stdout, res.stdout
    assert sql(cfg, "SELECT DISTINCT task FROM lines") == [] and sql(cfg, "SELECT task FROM logs") == []
    now = await keys(cfg)
    # nothing is deleted yet: a query or download that started before may still read it for 600 s
    assert {k for k in objects if k not in now} == set()
    assert sorted(k for k in now if k.startswith("deleting/")) == ["deleting/soon-gone/h1.json",
                                                                    "deleting/stays/h1.json"]
    res = gc(cfg, "--older-than", "0s", LOGSHIP_QUERY_GRACE_SECONDS="0")
    assert res.returncode == 0 and "deleted 2 logs" in res.stdout
    assert not [k for k in await keys(cfg) if not k.startswith(("lines/date=1970", "live/", names.CATALOG_PREFIX))]


async def test_a_watcher_does_not_bring_back_a_log_gc_is_deleting(make_config: MakeConfig) -> None:
    """A watcher restarted with the log still unshipped in its spool finds gc's `deleting` manifest: it
    stops shipping that log instead of rewriting the manifest (which would make it visible again)."""
    cfg = make_config(LOGSHIP_QUERY_GRACE_SECONDS="600")
    run(cfg, "going")
    await watch(cfg, once=True)
    d = cfg.spool_dir / "going" / "h1"
    (d / names.SHIPPED_FILE).unlink()  # as if the watcher had died before it noted the log shipped
    res = gc(cfg, "--older-than", "0s", "--no-wait")
    assert res.returncode == 0 and "1 logs hidden now" in res.stdout, res.stdout
    before = await keys(cfg)
    w = await watch(cfg, once=True)
    assert await keys(cfg) == before and w.stats["manifests"] == 0
    assert json.loads((d / names.SHIPPED_FILE).read_bytes())["deleted"] is True
    assert sql(cfg, "SELECT task FROM logs") == []


async def test_an_api_beside_the_spool_does_not_serve_a_deleted_log(make_config: MakeConfig) -> None:
    """The spool keeps a shipped log's files for a while (spool.keep_uploaded_seconds, the tombstone):
    once gc deleted the log from the store, the API beside that spool answers 404 like any other."""
    cfg = make_config(**NOW)
    run(cfg, "left-behind")
    await watch(cfg, once=True)
    assert (cfg.spool_dir / "left-behind" / "h1" / names.SHIPPED_FILE).exists()
    client = TestClient(TestServer(create_app(cfg, serve_spool=True)))
    await client.start_server()
    try:
        assert (await client.get("/api/v1/tasks/left-behind/hosts/h1/log")).status == 200
        assert gc(cfg, "--older-than", "0s").returncode == 0
        await asyncio.sleep(0.2)  # past the API's reuse of a finished log's view
        r = await client.get("/api/v1/tasks/left-behind/hosts/h1/log")
        assert r.status == 404 and (await r.json())["error"] == "not_found"
    finally:
        await client.close()


async def test_gc_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    from .support import config

    cfg = config(tmp_path)
    for args, words in ((["gc"], "--older-than"), (["gc", "--older-than", "soon"], "not a duration"),
                        (["gc", "--older-than", "1d", "--status", "running"], "never deleted"),
                        (["gc", "--older-than", "1d", "--label", "novalue"], "key=value")):
        res = subprocess.run([*LOGSHIP, *args], env=agent_env(cfg), capture_output=True, text=True, timeout=60)
        assert res.returncode == 2 and words in res.stderr, (args, res.stderr)


async def test_gc_prints_an_equivalent_s3_lifecycle_configuration(tmp_path: Path) -> None:
    from .support import config

    cfg = config(tmp_path, LOGSHIP_STORE_URL="s3://bucket/some/prefix", LOGSHIP_RETENTION_OLDER_THAN="36h")
    res = subprocess.run([*LOGSHIP, "gc", "--lifecycle"], env=agent_env(cfg), capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    rules = {r["ID"]: r for r in json.loads(res.stdout)["Rules"]}
    assert {r["Filter"]["Prefix"]: r["Expiration"]["Days"] for r in rules.values() if "Expiration" in r} == {
        "some/prefix/logs/": 2, "some/prefix/lines/": 2, "some/prefix/compact/": 2, "some/prefix/deleting/": 2}
    abort = rules["logship-abort-incomplete-uploads"]
    assert abort["Filter"]["Prefix"] == "some/prefix/" and abort["AbortIncompleteMultipartUpload"] == {
        "DaysAfterInitiation": 1}
    assert all(r["Status"] == "Enabled" for r in rules.values()) and "running" in res.stderr


async def test_logship_watch_applies_retention_and_compaction_on_its_schedule(make_config: MakeConfig) -> None:
    """A real `logship watch` runs gc by the retention policy and compaction beside its shipping
    (shipper/retention/maintenance.py), here every 2 s."""
    from shipper.retention import maintenance

    cfg = make_config(LOGSHIP_QUERY_GRACE_SECONDS="0", LOGSHIP_RETENTION_OLDER_THAN="7d",
                      LOGSHIP_RETENTION_EVERY="2s", LOGSHIP_COMPACT_EVERY="2s")
    for task in ("expired", "kept1", "kept2"):
        run(cfg, task)
    await watch(cfg, once=True)
    await age(cfg, "expired", 8)
    kept = [r for r in sql(cfg, LINES) if r[0] != "expired"]
    watcher = start_watcher(agent_env(cfg), stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            left = await keys(cfg)
            stored = [k for k in left if not k.startswith(names.CATALOG_PREFIX)]  # catalog rows: tombstones
            if not [k for k in stored if "expired" in k] and not [k for k in left if names.parse_lines_key(k)]:
                break
            await asyncio.sleep(0.3)
        else:
            raise AssertionError(f"not done in 60 s: {sorted(left)}")
    finally:
        watcher.terminate()
        _, err = watcher.communicate(timeout=60)
    assert watcher.returncode == 0, err
    # whichever ran first: compaction merged the three copies, or the two left after retention
    assert b"retention: deleted 1 logs" in err and re.search(rb"compact: merged [23] objects into 1 parts", err), err
    assert sql(cfg, LINES) == kept and sql(cfg, "SELECT task FROM logs ORDER BY task") == [("kept1",), ("kept2",)]
    # retention is off unless older_than is set; compaction is off with every = 0, the catalog's with catalog_every = 0
    store = open_store(cfg.store)
    off = {"LOGSHIP_COMPACT_EVERY": "0", "LOGSHIP_COMPACT_CATALOG_EVERY": "0"}
    assert maintenance.start(make_config(**off), store, asyncio.Event()) is None
    job = maintenance.start(make_config(LOGSHIP_COMPACT_EVERY="0"), store, asyncio.Event())
    assert job is not None  # the catalog is still compacted: every listing pays for its records
    job.cancel()
    await store.close()
