"""`logship serve`: run the API until SIGTERM/SIGINT."""

from __future__ import annotations

import logging

from aiohttp import web

from shipper.config import Config

from . import heap
from .app import create_app, say_listening


def main(cfg: Config) -> int:
    heap.use_malloc()  # re-executes this process once, on glibc's malloc (api/heap.py says why)
    app = create_app(cfg)
    app.cleanup_ctx.append(heap.trim_ctx)
    host, port = cfg.api.listen.rsplit(":", 1)
    # aiohttp.access logs nothing unless asked for (logging.level info,aiohttp.access=info: shipper/logs.py)
    web.run_app(app, host=host.strip("[]"), port=int(port), access_log=logging.getLogger("aiohttp.access"),
                print=say_listening(cfg), shutdown_timeout=5)
    return 0
