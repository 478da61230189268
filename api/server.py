"""`logship serve`: run the API until SIGTERM/SIGINT."""

from __future__ import annotations

import errno
import gc
import logging
import os
import socket

from aiohttp import web

from shipper.config import Config
from shipper.errors import LogshipError

from . import heap
from .app import create_app, say_listening

_WHERE = "set another HOST:PORT with api.listen in the config, or $LOGSHIP_API_LISTEN"
# What a failed bind means to whoever runs `logship serve`; anything else is not a bind error and goes on up.
BIND_HINTS = {
    errno.EADDRINUSE: "another process listens there (a `logship serve` already running? `ss -ltnp` says which); "
                      + _WHERE,
    errno.EADDRNOTAVAIL: "that is not an address of this machine; " + _WHERE,
    errno.EACCES: "ports below 1024 need privileges; " + _WHERE,
}


def main(cfg: Config) -> int:
    heap.use_malloc()  # re-executes this process once, on glibc's malloc (api/heap.py says why)
    app = create_app(cfg)
    app.cleanup_ctx.append(heap.trim_ctx)
    # What start-up made (modules, config, the app) lives as long as the process: kept out of the collector's
    # full passes (≈ 30 ms of them here), during which every live follower's next line waits (start-up's garbage
    # is collected first, or it would be kept for good).
    gc.collect()
    gc.freeze()
    host, port = cfg.api.listen.rsplit(":", 1)
    try:
        # aiohttp.access logs nothing unless asked for (logging.level info,aiohttp.access=info: shipper/logs.py)
        web.run_app(app, host=host.strip("[]"), port=int(port), access_log=logging.getLogger("aiohttp.access"),
                    print=say_listening(cfg), shutdown_timeout=5)
    except OSError as exc:  # raised by the bind, after the app's startup and cleanup ran
        raise bind_error(cfg.api.listen, exc) from None
    return 0


def bind_error(listen: str, exc: OSError) -> BaseException:
    """`exc` from binding `listen` as the one-line error `logship serve` ends with; any other OSError as it is."""
    if isinstance(exc, socket.gaierror):  # a host name that does not resolve
        return LogshipError(f"cannot listen on {listen}: {(exc.strerror or str(exc)).lower()}",
                            BIND_HINTS[errno.EADDRNOTAVAIL])
    if exc.errno not in BIND_HINTS:
        return exc
    return LogshipError(f"cannot listen on {listen}: {os.strerror(exc.errno).lower()}", BIND_HINTS[exc.errno])
