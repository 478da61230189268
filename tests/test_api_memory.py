"""The memory many followers leave behind in a real `logship serve`: back within 10 MB of before once they
have gone, even when they reset their connections (issue 11; issue 16, item 9; api/heap.py)."""

from __future__ import annotations

import base64
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from shipper.format import names

from .support import Api, start_agent, stop_agent

FOLLOWERS = 600
TICKS = "import time\nfor i in range(100000):\n    print('tick %06d' % i, flush=True); time.sleep(0.02)\n"


def rss(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def websocket(port: int, path: str) -> socket.socket:
    """A WebSocket, opened by hand (the test wants to reset it, which a client library would not)."""
    s = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = s.recv(4096)
        assert data, buf
        buf += data
    assert buf.startswith(b"HTTP/1.1 101"), buf[:200]
    return s


def test_followers_that_reset_their_connections_leave_no_memory_behind(tmp_path: Path) -> None:
    api = Api(tmp_path)
    api.start()
    agent = start_agent(api.spool, "mem", [sys.executable, "-c", TICKS], env=api.env,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    socks: list[socket.socket] = []
    try:
        assert api.proc is not None
        pid = api.proc.pid
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read().split(b"\0")
        assert b"PYTHONMALLOC=malloc" in environ  # logship serve chose glibc's malloc itself
        assert b"MALLOC_ARENA_MAX=2" in environ  # and few arenas (api/heap.py)
        assert b"MALLOC_TRIM_THRESHOLD_=4194304" in environ  # and a download's pieces reuse its heap
        assert b"MALLOC_MMAP_THRESHOLD_=2097152" in environ
        # and pyarrow (the listing's Parquet) allocates from that heap, not a mimalloc pool of its own
        env = dict(e.decode().split("=", 1) for e in environ if b"=" in e)
        probe = "import pyarrow; print(pyarrow.default_memory_pool().backend_name)"
        pool = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
        assert pool.stdout.strip() == "system"
        deadline = time.monotonic() + 20
        while not (api.spool / "mem" / "h1" / names.RUN_FILE).exists():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        path = "/api/v1/tasks/mem/hosts/h1/tail?lines=10"
        websocket(api.port, path).close()  # warm: the routes' first use
        time.sleep(1)
        before = rss(pid)
        for _ in range(2):
            socks = [websocket(api.port, path) for _ in range(FOLLOWERS)]
            for s in socks:
                assert s.recv(65536)  # following: the last lines came
            grown = rss(pid)
            for s in socks:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()  # a reset, not a close handshake
            socks = []
            deadline = time.monotonic() + 30
            while rss(pid) - before > 10 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert rss(pid) - before <= 10, (before, grown, rss(pid))
    finally:
        for s in socks:
            s.close()
        api.stop()
        stop_agent(agent, api.spool, "mem")
