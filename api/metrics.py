"""/healthz and /metrics (Prometheus text): the API's counters and the watcher's, read from the spool."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from shipper import names

from .keys import CONFIG, METRICS, SOURCE

routes = web.RouteTableDef()


@dataclass
class Metrics:
    requests: int = 0
    bytes_out: int = 0
    followers: int = 0  # open follow/tail connections right now
    tail_messages: int = 0
    tail_skipped_bytes: int = 0
    client_gone: int = 0  # downloads whose client went away before the end
    proxy_forwarded: int = 0  # live requests a central API forwarded to the API beside a log's spool
    proxy_refused: int = 0  # ... not forwarded: the manifest's api_url is not allowed (api.proxy_allow)
    proxy_unreachable: int = 0  # ... that API could not be reached (served from checkpoints)
    proxy_rejected: int = 0  # ... its answer broke a rule (status, sizes, run, offsets) and was not served


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    m = request.app[METRICS]
    lines = [
        "# TYPE logship_api_requests_total counter", f"logship_api_requests_total {m.requests}",
        "# TYPE logship_api_bytes_out_total counter", f"logship_api_bytes_out_total {m.bytes_out}",
        "# TYPE logship_api_followers gauge", f"logship_api_followers {m.followers}",
        "# TYPE logship_api_tail_messages_total counter", f"logship_api_tail_messages_total {m.tail_messages}",
        "# TYPE logship_api_tail_skipped_bytes_total counter",
        f"logship_api_tail_skipped_bytes_total {m.tail_skipped_bytes}",
        "# TYPE logship_api_downloads_cut_by_client_total counter",
        f"logship_api_downloads_cut_by_client_total {m.client_gone}",
        *(line for name in ("forwarded", "refused", "unreachable", "rejected") for line in (
            f"# TYPE logship_api_proxy_{name}_total counter",
            f"logship_api_proxy_{name}_total {getattr(m, 'proxy_' + name)}")),
    ]
    if request.app[SOURCE].spool is not None:
        state = await asyncio.to_thread(_read_state, request.app[CONFIG].spool_dir / names.WATCHER_STATE_FILE)
        if state:
            lines.append("# TYPE logship_watcher_healthy gauge")
            lines.append(f"logship_watcher_healthy {int(bool(state.get('healthy')))}")
            for k, v in sorted(state.get("stats", {}).items()):
                kind = "gauge" if k == "spool_bytes" else "counter"
                name = f"logship_watcher_{k}" + ("" if kind == "gauge" else "_total")
                lines += [f"# TYPE {name} {kind}", f"{name} {int(v)}"]
    return web.Response(body=("\n".join(lines) + "\n").encode(),
                        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def _read_state(path: Path) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads(path.read_bytes())
        return state
    except (FileNotFoundError, ValueError):
        return None
