"""Typed application state: every AppKey of the API in one place."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

if TYPE_CHECKING:
    from shipper.config import Config
    from shipper.store import Store

    from .hub import Hub
    from .metrics import Metrics
    from .proxy import ProxyState
    from .query import Engine
    from .sinks import Sink
    from .source import LogView, Source

CONFIG: web.AppKey[Config] = web.AppKey("config")
STORE: web.AppKey[Store] = web.AppKey("store")
SOURCE: web.AppKey[Source] = web.AppKey("source")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
PROXY_SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("proxy_session")
PROXY: web.AppKey[ProxyState] = web.AppKey("proxy")  # api.proxy_allow, parsed; nodes that answered badly
STOPPING: web.AppKey[asyncio.Event] = web.AppKey("stopping")  # set at shutdown: followers end their responses
QUERY_ENGINE: web.AppKey[Engine] = web.AppKey("query_engine")  # DuckDB, opened on the first query
HUB: web.AppKey[Hub] = web.AppKey("tail_hub")  # one watch per followed log, shared by its followers
SINKS: web.AppKey[set[Sink]] = web.AppKey("tail_sinks")  # open tails, closed with GOING_AWAY at shutdown
# The view the proxy middleware took to decide local vs forward, handed to the route that serves the request
# here, so a request takes one view (for a running log from the store: one manifest GET and one LIST), not two.
VIEW: web.RequestKey[LogView] = web.RequestKey("view")
