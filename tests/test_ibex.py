"""The Nightingale drop-in: an ibex script run the way Categraf runs it (`sh -c '<metadir>/<id>/script 'a' 'b''`,
from the account's home, no task id in the environment) is logged as ibex-<id>/<host>, and comes back whole
from the ibex-shaped routes of a real `logship serve`, live and from the S3 archive (SeaweedFS)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shipper.agent import default_host
from shipper.commands import ibex, s3local
from shipper.errors import LogshipError
from shipper.format import names

from .support import LOGSHIP, Api, env_for, watch_once

# The operator's change to a script: its first line. The body is plain sh; Categraf passes the args.
SCRIPT = r"""#!/usr/bin/env -S logship run --ibex -- /bin/sh
echo "args: $*"
seq 1 40000 | sed 's/^/out line /'
printf 'h\303\251llo w\303\266rld \342\234\223, and invalid UTF-8: \377\376 then NUL\000.\n'
seq 1 3000 | sed 's/^/err line /' >&2
printf 'no final newline'
exit 3
"""
# For shells without `env -S`: a re-exec line. LOGSHIP_IBEX_TASK tells the second pass it runs under logship.
REEXEC = r"""#!/bin/sh
[ -n "$LOGSHIP_IBEX_TASK" ] || exec logship run --ibex -- /bin/sh "$0" "$@"
echo "under $LOGSHIP_IBEX_TASK with $*"
"""
# A task that runs until the test lets it finish.
SLOW = r"""#!/usr/bin/env -S logship run --ibex -- /bin/sh
echo started
while [ ! -e "$1" ]; do sleep 0.02; done
echo finished
"""


class Categraf:
    """Runs ibex scripts as Categraf does: the script at <metadir>/<id>/script, `sh -c '<script> 'a' 'b''`
    from the home directory, with `logship` on PATH."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.meta, self.home = tmp_path / "meta", tmp_path / "home"
        self.home.mkdir()
        bindir = tmp_path / "bin"
        bindir.mkdir()
        (bindir / "logship").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m shipper.commands.cli "$@"\n')
        (bindir / "logship").chmod(0o755)
        self.env = {**env, "PATH": f"{bindir}:{os.environ['PATH']}"}

    def script(self, task_id: int, text: str) -> Path:
        path = self.meta / str(task_id) / "script"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o755)
        return path

    def command(self, task_id: int, *args: str) -> list[str]:
        quoted = " ".join(f"'{a}'" for a in args)
        return ["sh", "-c", f"{self.meta.resolve() / str(task_id) / 'script'} {quoted}"]

    def run(self, task_id: int, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(self.command(task_id, *args), env=self.env, cwd=self.home, capture_output=True,
                              timeout=120)


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def eventually(probe: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


@pytest.fixture
def api(tmp_path: Path, local_s3: s3local.LocalS3) -> Iterator[Api]:
    """`logship serve` beside the spool, over a fresh prefix of the session's SeaweedFS."""
    a = Api(tmp_path, LOGSHIP_STORE_URL=f"s3://{local_s3.bucket}/t-{secrets.token_hex(4)}/",
            LOGSHIP_STORE_ENDPOINT=local_s3.endpoint, LOGSHIP_STORE_ACCESS_KEY=local_s3.access_key,
            LOGSHIP_STORE_SECRET_KEY=local_s3.secret_key, LOGSHIP_SPOOL_KEEP_UPLOADED_SECONDS="0")
    a.start()
    try:
        yield a
    finally:
        a.stop()


def test_the_script_is_found_in_every_shape_categraf_and_operators_give() -> None:
    s = "/var/lib/categraf/meta/1042/script"
    for command in ([s, "a"], ["/bin/sh", s, "a"], ["sh", "-c", f"{s} 'a b' 'c'"], ["bash", "-c", s]):
        assert ibex.find_script(command) == (1042, Path(s)), command
    for command in (["/bin/sh", "/meta/x/script"], ["/meta/01/script"], ["/meta/7/scripts"], ["echo", "hi"]):
        with pytest.raises(LogshipError, match="no ibex script"):
            ibex.find_script(command)
    assert names.ibex_task(1042) == "ibex-1042" and names.ibex_task(1042, 2) == "ibex-1042.2"
    assert names.parse_ibex_task("ibex-1042.2") == (1042, 2) and names.parse_ibex_task("ibex-1042.1") is None


def test_an_ibex_script_comes_back_whole_from_the_ibex_routes(tmp_path: Path, api: Api) -> None:
    cat = Categraf(tmp_path, api.env)
    host = default_host()
    cat.script(501, SCRIPT)
    first = cat.run(501, "first", "run")
    # Categraf sees what it always saw: the script's output on its pipes, and its exit code.
    assert first.returncode == 3, first.stderr[-500:]
    assert first.stdout.startswith(b"args: first run\nout line 1\n") and first.stdout.endswith(b"no final newline")
    assert len(first.stdout) > 16380 * 4 and first.stderr.endswith(b"err line 3000\n")
    # The same script on a second host, given as a command line (the shebang line is a comment to sh).
    script = str(cat.meta / "501" / "script")
    second = subprocess.run([*LOGSHIP, "run", "--ibex", "--host", "h2", "--", "/bin/sh", script, "two"],
                            env=cat.env, cwd=cat.home, capture_output=True, timeout=120)
    assert second.returncode == 3 and second.stdout.startswith(b"args: two\n")
    # Nightingale's redo runs the task again on the host: a second log, never an overwrite.
    redo = cat.run(501, "redo")
    assert redo.returncode == 3 and redo.stdout.startswith(b"args: redo\n")
    # The re-exec line, for systems without `env -S`: one agent, not two.
    cat.script(502, REEXEC)
    reexec = cat.run(502, "x")
    assert reexec.returncode == 0 and reexec.stdout == b"under ibex-502 with x\n", reexec.stderr
    assert sorted(p.name for p in api.spool.iterdir() if p.name.startswith("ibex-")) == [
        "ibex-501", "ibex-501.2", "ibex-502"]

    # Shipped, the spool's segments deleted (keep_uploaded_seconds=0): what follows comes from S3.
    shipped = watch_once(api.env)
    assert shipped.returncode == 0, shipped.stderr[-2000:]
    assert not list(api.spool.glob("ibex-*/*/*.log"))

    url = f"{api.url}/ibex/v1/task/501"
    status, body = get(f"{url}/stdout")
    assert status == 200
    doc = json.loads(body)
    assert doc["err"] == "" and [r["host"] for r in doc["dat"]] == sorted([host, "h2"])
    rows = {r["host"]: r for r in doc["dat"]}
    assert rows[host] == {"id": 501, "host": host, "status": "failed", "stdout": redo.stdout.decode(errors="replace"),
                          "stderr": ""}  # the newest run of each host, whole
    assert rows["h2"]["stdout"] == second.stdout.decode(errors="replace")
    status, body = get(f"{url}/stderr")
    assert {r["host"]: r["stderr"] for r in json.loads(body)["dat"]} == {
        host: redo.stderr.decode(), "h2": second.stderr.decode()}
    # plain text, byte-exact, hosts one after another as ibex writes them
    by_host = {host: redo.stdout, "h2": second.stdout}
    want = b"\n\n".join(h.encode() + b":\n" + by_host[h] for h in sorted(by_host))
    assert get(f"{url}/stdout.txt") == (200, want)
    with urllib.request.urlopen(urllib.request.Request(f"{url}/stdout.txt", method="HEAD"), timeout=60) as r:
        assert r.status == 200 and r.read() == b""
    status, body = get(f"{url}/stdout.json?host=h2")
    assert json.loads(body) == {"dat": [{"host": "h2", "stdout": second.stdout.decode(errors="replace")}], "err": ""}
    assert get(f"{url}/stdout.json?host=nope")[0] == 404 and get(f"{api.url}/ibex/v1/task/9/stdout")[0] == 404
    assert get(f"{api.url}/ibex/v1/task/x1/stdout")[0] == 400

    # The same logs on logship's own routes: the first run kept, the full download, SQL.
    log = f"{api.url}/api/v1/tasks/ibex-501/hosts/{host}"
    status, body = get(log)
    meta = json.loads(body)
    assert meta["labels"] == {"source": "ibex", "ibex_id": "501"} and meta["exit_code"] == 3
    assert get(f"{log}/log?stream=stdout") == (200, first.stdout)
    assert len(get(f"{log}/log")[1]) == len(first.stdout) + len(first.stderr)
    req = urllib.request.Request(f"{api.url}/api/v1/query", method="POST", headers={"Content-Type": "application/json"},
                                 data=json.dumps({"sql": "SELECT task, host, count(*) AS n FROM lines WHERE "
                                                         "task LIKE 'ibex-501%' AND contains(line, 'out line') "
                                                         "GROUP BY ALL ORDER BY ALL"}).encode())
    with urllib.request.urlopen(req, timeout=120) as r:
        got = [(row["task"], row["host"], row["n"]) for row in json.loads(r.read())["rows"]]
    assert got == sorted([("ibex-501", "h2", 40000), ("ibex-501", host, 40000), ("ibex-501.2", host, 40000)])


def test_a_running_ibex_task_is_live_on_the_ibex_routes(tmp_path: Path, api: Api) -> None:
    cat = Categraf(tmp_path, api.env)
    cat.script(503, SLOW)
    flag = tmp_path / "go"
    task = subprocess.Popen(cat.command(503, str(flag)), env=cat.env, cwd=cat.home, stdout=subprocess.PIPE)
    try:
        def rows() -> list[dict[str, Any]]:
            status, body = get(f"{api.url}/ibex/v1/task/503/stdout")
            return json.loads(body)["dat"] if status == 200 else []

        assert eventually(lambda: [r["stdout"] for r in rows()] == ["started\n"])
        assert rows()[0]["status"] == "running"
        flag.touch()
        assert task.wait(60) == 0
        assert eventually(lambda: [(r["status"], r["stdout"]) for r in rows()] == [("success", "started\nfinished\n")])
    finally:
        task.kill()
        task.wait()


def _dead(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_nightingales_kill_stops_the_script(tmp_path: Path) -> None:
    cat = Categraf(tmp_path, env_for(tmp_path / "spool"))
    cat.script(504, SLOW)
    # Categraf: Setsid for the `sh -c`, and its kill action is SIGKILL to that whole process group
    sh = subprocess.Popen(cat.command(504, str(tmp_path / "never")), env=cat.env, cwd=cat.home,
                          stdout=subprocess.PIPE, start_new_session=True)
    run = tmp_path / "spool" / "ibex-504" / default_host() / names.RUN_FILE
    assert eventually(run.exists)
    task = json.loads(run.read_bytes())["child_pid"]
    os.killpg(sh.pid, signal.SIGKILL)
    sh.wait()
    try:
        assert eventually(lambda: _dead(task), timeout=2)
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(task, signal.SIGKILL)


def test_without_a_script_in_the_command_ibex_says_what_to_do(tmp_path: Path) -> None:
    res = subprocess.run([*LOGSHIP, "run", "--ibex", "--", "echo", "hi"], env=env_for(tmp_path / "spool"),
                         capture_output=True, timeout=60)
    assert res.returncode == 125 and b"no ibex script" in res.stderr and b"docs/ibex.md" in res.stderr
    res = subprocess.run([*LOGSHIP, "run", "--ibex", "--task", "t", "--", "echo"], env=env_for(tmp_path / "spool"),
                         capture_output=True, timeout=60)
    assert res.returncode == 2 and b"not allowed with argument" in res.stderr
