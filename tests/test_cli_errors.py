"""Errors the CLI and the API say plainly (issues 13 and 16): `cat`, `tail` and `download` of a task that ran
on several hosts name them; a task id with no log is an error of its own (exit 2, HTTP 404), never "no
match" (grep's exit 1); `serve` on a port in use ends with one line; a watcher's conflict is an event."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from shipper.commands.hosts import MAX_NAMED, pick
from shipper.errors import LogshipError
from shipper.format import names
from shipper.format.hosts import hosts_of
from shipper.store import open_store
from shipper.watcher import watch

from .support import LOGSHIP, Api, MakeConfig, agent_env, client_for, env_for, free_port, run_agent, spooled

CMD = ["sh", "-c", "seq 1 200; echo needle-$0"]  # one stream: line 201 whatever the order of two pipes


def logship(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LOGSHIP, *args], env=env, capture_output=True, text=True, timeout=120, cwd=cwd)


def ran(spool: Path, env: dict[str, str], task: str, host: str) -> bytes:
    res = run_agent(spool, task, CMD, host=host, env=env)
    assert res.returncode == 0, res.stderr
    return spooled(spool, task, host)


# --- cat and grep, straight from the store ----------------------------------------------------


async def test_cat_names_the_hosts_of_a_task_and_a_task_without_log_is_an_error(make_config: MakeConfig) -> None:
    cfg = make_config()
    env = agent_env(cfg)
    logs = {(task, host): ran(cfg.spool_dir, env, task, host) for task, host in
            [("multi", "h1"), ("multi", "h2"), ("one", "h7")]}
    await watch(cfg, once=True)
    url = cfg.store.url

    res = logship(env, "cat", "multi")
    assert res.returncode == 2 and not res.stdout
    assert res.stderr == ("logship: task multi ran on 2 hosts: h1, h2; --host says which (hint: pick one with "
                          "--host H, e.g. `logship cat multi --host h1`)\n")
    res = logship(env, "cat", "multi", "--host", "h2")
    assert res.returncode == 0 and res.stdout.encode() == logs[("multi", "h2")]
    res = logship(env, "cat", "one")  # one host, not this machine: that log, as with --host
    assert res.returncode == 0 and res.stdout.encode() == logs[("one", "h7")]
    res = logship(env, "cat", "multi", "--host", "h3")
    assert res.returncode == 2 and res.stderr.startswith(f"logship: no log multi/h3 in {url}; task multi ran on "
                                                         "h1, h2 (hint: pick one of them with --host H, e.g. ")
    for args in (["cat", "nope"], ["cat", "nope", "--host", "h1"]):
        res = logship(env, *args)
        assert res.returncode == 2 and not res.stdout
        assert res.stderr.startswith(f"logship: no log of task nope in {url} (hint: check the task id"), res.stderr
        assert "Traceback" not in res.stderr


async def test_hosts_of_a_task_cost_one_listing_whatever_its_objects(make_config: MakeConfig) -> None:
    cfg = make_config()
    store = open_store(cfg.store)
    try:
        hosts = [f"h{i:02d}" for i in range(MAX_NAMED + 5)]
        keys = [names.manifest_key("big", h) for h in hosts]
        keys += [names.segment_key("big", "h00", seq, "none") for seq in range(1100)]  # over a listing page
        keys += [f"logs/big/{h}/00000001.log" for h in ("not a host", "h99")]  # no id; no manifest
        await store.put(names.manifest_key("big2", "h1"), b"{}")  # a task whose name starts the same
        for i in range(0, len(keys), 100):
            await asyncio.gather(*(store.put(k, b"{}") for k in keys[i:i + 100]))
        before = dict(store.stats.requests)
        found = await hosts_of(store, "big", want=MAX_NAMED + 1)
        used = {op: n - before.get(op, 0) for op, n in store.stats.requests.items() if n != before.get(op, 0)}
        assert found.hosts == hosts[:MAX_NAMED + 1]
        assert found.unchecked == len(hosts) - MAX_NAMED - 1 + 1  # the rest, and h99 (no manifest) among them
        assert used == {"list_objects_v2": 1, "head_object": MAX_NAMED + 1}
        assert (await hosts_of(store, "big", want=1)).hosts == ["h00"]
        assert (await hosts_of(store, "none")).hosts == []
        assert (await hosts_of(store, "big")).hosts == hosts  # h99 holds no manifest: not a log
    finally:
        await store.close()


def test_pick_names_a_few_hosts_and_counts_the_rest() -> None:
    many = [f"h{i:02d}" for i in range(25)]
    with pytest.raises(LogshipError) as info:
        pick("logship cat t", "t", None, "me", many, 3, " in S", "none")
    assert info.value.detail == f"task t ran on 28 hosts: {', '.join(many[:MAX_NAMED])} and 18 more; --host says which"
    assert pick("logship cat t", "t", None, "me", ["h1"], 0, "", "") == "h1"
    with pytest.raises(LogshipError, match="ran on 2 hosts"):  # an unchecked name may be a second host
        pick("logship cat t", "t", None, "me", ["h1"], 1, "", "")
    with pytest.raises(LogshipError) as info:
        pick("logship cat t", "t", "h1", "h1", ["h2"], 0, " in S", "")
    assert info.value.detail == "no log t/h1 in S; task t ran on h2"
    with pytest.raises(LogshipError) as info:
        pick("logship cat t", "t", "h1", "h1", [], 0, " in S", "the hint")
    assert (info.value.detail, info.value.hint) == ("no log of task t in S", "the hint")


async def test_grep_tells_a_task_without_log_from_no_match(make_config: MakeConfig) -> None:
    cfg = make_config()
    env = agent_env(cfg)
    for host in ("h1", "h2"):
        ran(cfg.spool_dir, env, "multi", host)
    await watch(cfg, once=True)
    ran(cfg.spool_dir, env, "fresh", "h1")  # in the spool only: a log, not yet searchable

    res = logship(env, "grep", "needle", "--task", "multi")
    assert res.returncode == 0 and sorted(res.stdout.splitlines()) == ["multi/h1:201: needle-sh",
                                                                       "multi/h2:201: needle-sh"]
    for args in (["--task", "multi"], ["--task", "multi", "--host", "h2"], ["--task", "fresh"],
                 ["--task", "fresh", "--host", "h1"]):
        res = logship(env, "grep", "no such text", *args)
        assert (res.returncode, res.stdout, res.stderr) == (1, "", ""), args  # grep's "no match": quiet
    res = logship(env, "grep", "needle", "--task", "nope")
    assert res.returncode == 2 and not res.stdout
    assert res.stderr.startswith(f"logship: no log of task nope in {cfg.store.url} (hint: check the task id")
    res = logship(env, "grep", "needle", "--task", "multi", "--host", "h9")
    assert res.returncode == 2 and res.stderr.startswith(
        f"logship: no log multi/h9 in {cfg.store.url}; task multi ran on h1, h2 (hint: pick one of them with "
        "--host H, e.g. `logship grep needle --task multi --host h1`)")
    res = logship(env, "grep", "needle", "--task", "../x")
    assert res.returncode == 2 and res.stderr.startswith("logship: invalid task id")


async def test_search_answers_404_for_a_task_without_log(make_config: MakeConfig) -> None:
    cfg = make_config()
    env = agent_env(cfg)
    for host in ("h1", "h2"):
        ran(cfg.spool_dir, env, "multi", host)
    await watch(cfg, once=True)
    client = await client_for(cfg)
    try:
        resp = await client.get("/api/v1/search", params={"q": "no such text", "task": "multi"})
        assert resp.status == 200 and (await resp.json())["hits"] == []
        resp = await client.get("/api/v1/search", params={"q": "needle", "task": "multi", "host": "h2"})
        assert resp.status == 200 and [h["host"] for h in (await resp.json())["hits"]] == ["h2"]
        resp = await client.get("/api/v1/search", params={"q": "needle", "task": "nope"})
        assert resp.status == 404 and resp.content_type == "application/json"
        body = await resp.json()
        assert body["error"] == "not_found" and body["detail"] == "no log of task nope" and body["hint"]
        resp = await client.get("/api/v1/search", params={"q": "needle", "task": "multi", "host": "h9"})
        body = await resp.json()
        assert resp.status == 404 and body["detail"] == "no log multi/h9" and "h1, h2" in body["hint"]
    finally:
        await client.close()


# --- tail and download, through the API ------------------------------------------------------


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    a = Api(tmp_path)
    a.start()
    try:
        yield a
    finally:
        a.stop(signal.SIGKILL)


def test_tail_and_download_pick_the_only_host_and_name_several(api: Api) -> None:
    one = api.run("one", "print('only here')", host="h7")
    for host in ("h1", "h2"):
        api.run("multi", f"print('on {host}')", host=host)

    res = api.cli("tail", "one")
    assert res.returncode == 0 and res.stdout == one
    res = api.cli("download", "one", "-o", "one.log")
    assert res.returncode == 0 and (api.tmp_path / "one.log").read_bytes() == one
    res = api.cli("tail", "multi")
    assert res.returncode == 2 and not res.stdout
    assert res.stderr.decode() == ("logship: task multi ran on 2 hosts: h1, h2; --host says which (hint: pick one "
                                   "with --host H, e.g. `logship tail multi --host h1`)\n")
    res = api.cli("download", "multi", "--host", "h3", "-o", "m.log")
    assert res.returncode == 2 and res.stderr.decode().startswith(
        f"logship: no log multi/h3 at {api.url}; task multi ran on h1, h2 (hint: pick one of them with --host H, "
        "e.g. `logship download multi -o m.log --host h1`)")
    for args in (["tail", "nope"], ["tail", "-f", "nope", "--host", "h1"], ["download", "nope", "-o", "x.log"]):
        res = api.cli(*args, timeout=30)
        assert res.returncode == 2 and not res.stdout, args
        assert res.stderr.decode().startswith(f"logship: no log of task nope at {api.url} (hint: check the task id")
    assert not (api.tmp_path / "x.log").exists() and not (api.tmp_path / "m.log").exists()


# --- serve on an address it cannot have --------------------------------------------------------


def test_serve_on_a_port_in_use_says_so_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = env_for(tmp_path / "spool", {"LOGSHIP_STORE_URL": f"file://{tmp_path / 'archive'}",
                                           "LOGSHIP_API_LISTEN": f"127.0.0.1:{port}"})
        res = logship(env, "serve", cwd=tmp_path)
        assert res.returncode == 2 and not res.stdout
        assert res.stderr.startswith(f"logship: cannot listen on 127.0.0.1:{port}: address already in use (hint: "), \
            res.stderr
        assert "api.listen" in res.stderr and "LOGSHIP_API_LISTEN" in res.stderr
        assert len(res.stderr.splitlines()) == 1 and "Traceback" not in res.stderr
        res = logship({**env, "LOGSHIP_LOGGING_FORMAT": "json"}, "serve", cwd=tmp_path)
        line = json.loads(res.stderr)  # one JSON line for log collectors
        assert res.returncode == 2 and line["event"] == "giving_up" and "address already in use" in line["detail"]
    # TEST-NET-1: no address of this machine (the bind fails at once; nothing is sent)
    env.update(LOGSHIP_API_LISTEN=f"192.0.2.1:{free_port()}", LOGSHIP_API_TOKENS="t" * 20)
    res = logship(env, "serve", cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.startswith("logship: cannot listen on 192.0.2.1:") and "cannot assign requested address" in \
        res.stderr and "Traceback" not in res.stderr


# --- the watcher's conflict, as an event -------------------------------------------------------


def test_a_conflict_is_a_log_conflict_event(tmp_path: Path) -> None:
    store = {"LOGSHIP_STORE_URL": f"file://{tmp_path / 'archive'}", "LOGSHIP_LOGGING_FORMAT": "json"}
    for spool in ("a", "b"):  # two runs of twice/h1, on two spools: the second finds the first in the store
        env = env_for(tmp_path / spool, store)
        assert run_agent(tmp_path / spool, "twice", ["echo", spool], env=env).returncode == 0
        res = logship(env, "watch", "--once")
        assert res.returncode == 0, res.stderr
    events = [json.loads(line) for line in res.stderr.splitlines()]
    conflict = [e for e in events if e.get("event") == "log_conflict"]
    assert len(conflict) == 1, events
    assert conflict[0]["level"] == "error" and (conflict[0]["task"], conflict[0]["host"]) == ("twice", "h1")
    assert "the store holds another run of this log" in conflict[0]["msg"]
    assert os.path.exists(tmp_path / "b" / "twice" / "h1")  # kept in its spool
