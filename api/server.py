"""`logship serve`: run the API until SIGTERM/SIGINT."""

from __future__ import annotations

import logging

from aiohttp import web

from shipper.config import Config

from .app import create_app, say_listening


def main(cfg: Config) -> int:
    app = create_app(cfg)
    host, port = cfg.api.listen.rsplit(":", 1)
    # aiohttp.access logs nothing unless asked for (logging.level info,aiohttp.access=info: shipper/logs.py)
    web.run_app(app, host=host.strip("[]"), port=int(port), access_log=logging.getLogger("aiohttp.access"),
                print=say_listening(cfg), shutdown_timeout=5)
    return 0
