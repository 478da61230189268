"""`logship serve`: run the API until SIGTERM/SIGINT."""

from __future__ import annotations

import logging

from aiohttp import web

from shipper.config import Config

from .app import create_app


def main(cfg: Config) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    app = create_app(cfg)
    host, port = cfg.api.listen.rsplit(":", 1)
    web.run_app(app, host=host.strip("[]"), port=int(port), access_log=None, print=None,
                shutdown_timeout=5)
    return 0
