"""`logship watch --check` and `logship serve --check` against real daemons and a SeaweedFS of their own:
healthy, store stopped or frozen, daemon stopped — exit 1 with what is wrong, else 0."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from shipper.commands import s3local
from shipper.commands.cli import build_parser
from shipper.format import names

from .support import LOGSHIP, ROOT, Api, env_for, start_agent, start_watcher, stop_agent

Result = subprocess.CompletedProcess[bytes]
TICKER = "import time\nwhile True:\n    print('tick', flush=True)\n    time.sleep(0.1)\n"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[s3local.LocalS3]:
    """A SeaweedFS for this module only: its tests stop, freeze and restart it."""
    inst = s3local.start(tmp_path_factory.mktemp("check-s3"))
    try:
        yield inst
    finally:
        s3local.stop(inst)


def store_env(inst: s3local.LocalS3) -> dict[str, str]:
    return {"LOGSHIP_STORE_URL": f"s3://{inst.bucket}/t-{secrets.token_hex(4)}/",
            "LOGSHIP_STORE_ENDPOINT": inst.endpoint, "LOGSHIP_STORE_ACCESS_KEY": inst.access_key,
            "LOGSHIP_STORE_SECRET_KEY": inst.secret_key}


def check(env: dict[str, str], cmd: str, *args: str) -> Result:
    return subprocess.run([*LOGSHIP, cmd, "--check", *args], env=env, capture_output=True, timeout=60)


def until(probe: Callable[[], Result], ok: Callable[[Result], bool], timeout: float = 60) -> Result:
    deadline = time.monotonic() + timeout
    while True:
        res = probe()
        if ok(res) or time.monotonic() > deadline:
            return res
        time.sleep(0.2)


def test_watch_check_follows_the_watcher_and_its_store(tmp_path: Path, s3: s3local.LocalS3) -> None:
    env = env_for(tmp_path / "spool", store_env(s3), LOGSHIP_WATCH_CHECKPOINT_SECONDS="0.5")
    res = check(env, "watch")
    assert res.returncode == 1 and b"UNHEALTHY: no watcher has run on the spool" in res.stderr
    # a running task: the watcher checkpoints it every 0.5 s, so it learns of an outage at once
    task = start_agent(tmp_path / "spool", "ticker", [sys.executable, "-c", TICKER], env=env,
                       stdout=subprocess.DEVNULL)
    watcher = start_watcher(env, stderr=subprocess.DEVNULL)
    try:
        res = until(lambda: check(env, "watch"), lambda r: r.returncode == 0)
        assert res.returncode == 0 and b"OK: watcher pid" in res.stdout and b"reachable" in res.stdout, res.stderr

        s3local.stop(s3)
        try:
            res = until(lambda: check(env, "watch", "--max-failing", "1s"), lambda r: r.returncode == 1)
            assert res.returncode == 1 and b"cannot reach the store" in res.stderr, res.stdout
            # a short outage within the allowance is healthy, and said so
            res = check(env, "watch", "--max-failing", "1h")
            assert res.returncode == 0 and b"has failed for" in res.stdout
        finally:
            s3local.restart(s3)
        res = until(lambda: check(env, "watch", "--max-failing", "1s"), lambda r: r.returncode == 0)
        assert res.returncode == 0, res.stderr

        watcher.send_signal(signal.SIGTERM)
        assert watcher.wait(30) == 0
        res = check(env, "watch")
        assert res.returncode == 1 and f"the watcher (pid {watcher.pid}) is not running".encode() in res.stderr
    finally:
        watcher.kill()
        watcher.wait()
        stop_agent(task, tmp_path / "spool", "ticker")


def test_an_idle_watcher_started_without_its_store_is_unhealthy(tmp_path: Path, s3: s3local.LocalS3) -> None:
    env = env_for(tmp_path / "spool", store_env(s3))
    s3local.stop(s3)
    watcher = start_watcher(env, stderr=subprocess.DEVNULL)
    try:
        res = until(lambda: check(env, "watch", "--max-failing", "1s"), lambda r: b"cannot reach" in r.stderr)
        assert res.returncode == 1 and b"cannot reach the store" in res.stderr, (res.stdout, res.stderr)
    finally:
        watcher.kill()
        watcher.wait()
        s3local.restart(s3)


def test_watch_check_fails_on_a_stale_or_unreadable_state(tmp_path: Path) -> None:
    env = env_for(tmp_path / "spool")
    state = tmp_path / "spool" / names.WATCHER_STATE_FILE
    state.parent.mkdir()
    ten_minutes_ago = time.time_ns() - 600 * 10**9
    # a live process (this one) whose last pass is 10 minutes old: stuck
    state.write_text(json.dumps({"pid": os.getpid(), "updated_ns": ten_minutes_ago, "healthy": True}))
    res = check(env, "watch")
    assert res.returncode == 1 and b"has not finished a pass for 10m (limit 300s)" in res.stderr, res.stderr
    assert check(env, "watch", "--max-age", "1h").returncode == 0
    assert check(env, "watch", "--max-age", "soon").returncode == 2
    state.write_text("{")
    res = check(env, "watch")
    assert res.returncode == 1 and b"cannot be read" in res.stderr


def test_serve_check_follows_the_api_and_its_store(tmp_path: Path, s3: s3local.LocalS3) -> None:
    api = Api(tmp_path, **store_env(s3))
    api.start()
    try:
        res = check(api.env, "serve")
        assert res.returncode == 0 and b"OK: the API at" in res.stdout, res.stderr

        s3local.stop(s3)
        try:
            res = check(api.env, "serve")
            assert res.returncode == 1 and b"its store does not answer" in res.stderr, res.stdout
        finally:
            s3local.restart(s3)
        assert until(lambda: check(api.env, "serve"), lambda r: r.returncode == 0).returncode == 0

        s3local.pause(s3)  # accepts connections, answers nothing
        try:
            t0 = time.monotonic()
            res = check(api.env, "serve")
            assert res.returncode == 1 and b"no answer within 2s" in res.stderr, res.stderr
            assert time.monotonic() - t0 < 10  # not hanging (2 s are /readyz's timeout; the rest slack for load)
        finally:
            s3local.resume(s3)
        assert until(lambda: check(api.env, "serve"), lambda r: r.returncode == 0).returncode == 0

        api.stop()
        res = check(api.env, "serve")
        assert res.returncode == 1 and b"nothing answers at" in res.stderr and b"refused" in res.stderr
    finally:
        api.stop(signal.SIGKILL)


# --- the service files (infra/) ---------------------------------------------------------------


@pytest.mark.parametrize("name,endpoint", [("aws-s3.yaml", ""), ("minio.yaml", "http://minio.internal:9000"),
                                           ("seaweedfs.yaml", "http://seaweedfs.internal:8333")])
def test_example_configs_load(name: str, endpoint: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOGSHIP_", "AWS_"))}
    res = subprocess.run([*LOGSHIP, "config", "--config", str(ROOT / "infra" / "examples" / name)],
                         env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, timeout=60)
    assert res.returncode == 0, res.stderr
    doc = yaml.safe_load(res.stdout)
    assert doc["store"]["url"].startswith("s3://") and doc["store"]["endpoint"] == endpoint
    assert doc["spool"]["dir"] == "/var/lib/logship/spool" and doc["api"]["listen"].startswith("127.0.0.1:")


def test_systemd_units_run_real_commands_and_verify(tmp_path: Path) -> None:
    units = sorted((ROOT / "infra" / "systemd").glob("logship-*"))
    assert {u.name for u in units} >= {"logship-watch.service", "logship-api.service", "logship-check@.service"}
    parser = build_parser()
    for unit in units:
        text = unit.read_text()
        for line in (x for x in text.splitlines() if x.startswith("ExecStart=")):
            argv = line.split("=", 1)[1].split()
            assert argv[0] == "/opt/logship/bin/logship" and argv[-2:] == ["--config", "/etc/logship/logship.yaml"]
            for cmd in (["watch", "serve"] if "%i" in argv else [None]):
                # exits on a bad flag
                args = parser.parse_args([cmd if cmd is not None and a == "%i" else a for a in argv[1:]])
                assert args.cmd in ("watch", "serve")
        if unit.suffix == ".service" and "@" not in unit.name:
            assert {"User=logship", "Restart=on-failure", "ProtectSystem=strict", "NoNewPrivileges=yes"} <= set(
                text.splitlines()), unit.name
        (tmp_path / unit.name).write_text(text.replace("/opt/logship/bin/logship", "/bin/true"))
    assert "ReadWritePaths=/var/lib/logship" in (ROOT / "infra/systemd/logship-watch.service").read_text()
    if shutil.which("systemd-analyze") is None:
        pytest.skip("no systemd-analyze here to verify the units with")
    res = subprocess.run(["systemd-analyze", "verify", "--man=no", *[str(tmp_path / u.name) for u in units]],
                         capture_output=True, timeout=60)
    assert res.returncode == 0 and res.stdout + res.stderr == b"", res.stderr
