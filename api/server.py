"""`logship serve`: run the API until SIGTERM/SIGINT."""

from __future__ import annotations

import logging

from aiohttp import web

from shipper.config import Config

from . import heap
from .app import create_app


def main(cfg: Config) -> int:
    heap.use_malloc()  # re-executes this process once, on glibc's malloc (api/heap.py says why)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    app = create_app(cfg)
    app.cleanup_ctx.append(heap.trim_ctx)
    host, port = cfg.api.listen.rsplit(":", 1)
    web.run_app(app, host=host.strip("[]"), port=int(port), access_log=None, print=None,
                shutdown_timeout=5)
    return 0
