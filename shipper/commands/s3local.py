"""The local S3 server (SeaweedFS `weed mini`) for development, tests and the quick start.

`logship s3 start|stop|env` lands here; tests use start/stop and the kill/pause/restart fault helpers.
The machine side (the `weed` binary, free ports, its process group's signals) is weedproc.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from shipper.config import StoreConfig
from shipper.errors import LogshipError, StoreError

from . import weedproc

log = logging.getLogger(__name__)

DEFAULT_DIR = "./.logship/s3"
DEFAULT_BUCKET = "logship"
STATE_FILE = "state.json"
LOG_FILE = "weed.log"
DATA_DIR = "data"
# Every listener gets an explicit port so parallel instances coexist (DESIGN §8).
PORT_FLAGS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
              "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc")
START_ATTEMPTS = 4  # weed exits at once when a port was taken after we picked it: try fresh ones
# weed mini stops in 1-2.5 s, but may hang in its volume server's graceful HTTP stop when told to stop
# while its admin part is still starting; it survives SIGKILL (tested), so do not wait long.
STOP_GRACE_SECONDS = 4.0
PROBE_KEY = ".logship-ready"
PROBE_TIMEOUT = 1.0


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
    with weedproc.locked(dir):
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
            ports = weedproc.pick_ports()
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
    return inst if inst is not None and weedproc.alive(inst.pid) else None


def stop(target: Path | str | LocalS3) -> None:
    """SIGTERM the server's process group, SIGKILL it after a few seconds. Stopping a stopped server is fine."""
    d = target.dir if isinstance(target, LocalS3) else Path(target)
    if not d.is_dir():
        return
    with weedproc.locked(d):
        inst = target if isinstance(target, LocalS3) else _read_state(d)
        if inst is not None:
            _stop(inst)


def _stop(inst: LocalS3) -> None:
    if weedproc.alive(inst.pid):
        weedproc.signal_group(inst.pid, signal.SIGCONT)  # a paused server cannot act on SIGTERM
        weedproc.signal_group(inst.pid, signal.SIGTERM)
        if not weedproc.wait_dead(inst.pid, STOP_GRACE_SECONDS):
            weedproc.signal_group(inst.pid, signal.SIGKILL)
            weedproc.wait_dead(inst.pid, STOP_GRACE_SECONDS)
    _mark_stopped(inst)


def kill(inst: LocalS3) -> None:
    """Crash the server (SIGKILL, no shutdown); `restart` brings it back with its data."""
    if weedproc.alive(inst.pid):
        weedproc.signal_group(inst.pid, signal.SIGKILL)
        weedproc.wait_dead(inst.pid, STOP_GRACE_SECONDS)
    _mark_stopped(inst)


def pause(inst: LocalS3, timeout: float = 5.0) -> None:
    """Freeze the server (SIGSTOP): connections are accepted by the kernel but never answered.

    Returns once every thread of it is stopped: the signal is only queued when killpg returns, and on a
    loaded machine a thread not yet stopped could still answer the next request."""
    weedproc.signal_group(inst.pid, signal.SIGSTOP)
    deadline = time.monotonic() + timeout
    while not weedproc.stopped(inst.pid) and time.monotonic() < deadline:
        time.sleep(0.005)


def resume(inst: LocalS3) -> None:
    weedproc.signal_group(inst.pid, signal.SIGCONT)


def restart(inst: LocalS3, timeout: float = 30.0) -> LocalS3:
    """Stop the server if it runs, then start it on the same ports and data dir. Updates `inst` in place."""
    if not inst.ports:
        raise LogshipError(f"no saved ports for the local S3 server in {inst.dir}", "start it with s3local.start")
    try:
        with weedproc.locked(inst.dir):
            _stop(inst)
            return _launch(inst, dict(inst.ports), time.monotonic() + timeout)
    except _ExitedAtOnce as exc:
        raise LogshipError(f"weed mini could not restart on its ports {sorted(inst.ports.values())}: {exc}",
                           "another process took one of them; see " + str(inst.dir / LOG_FILE)) from None


# --- internals -------------------------------------------------------------------------


class _ExitedAtOnce(Exception):
    """weed exited during startup; its last output is the message."""


def _launch(inst: LocalS3, ports: dict[str, int], deadline: float) -> LocalS3:
    weed = weedproc.find_weed()
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
    weedproc.children[proc.pid] = proc
    inst.pid, inst.port, inst.ports = proc.pid, ports["s3.port"], dict(ports)
    try:
        weedproc.run(_wait_ready(inst, proc, deadline))
    except _ExitedAtOnce as exc:
        weedproc.forget(proc)
        tail = weedproc.log_tail(d / LOG_FILE, log_start)
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
            if weedproc.port_open(inst.port):
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


def _mark_stopped(inst: LocalS3) -> None:
    weedproc.children.pop(inst.pid, None)
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
