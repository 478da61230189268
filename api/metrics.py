"""/healthz and /metrics (Prometheus text): the API's counters and the watcher's, read from the spool."""

from __future__ import annotations

import asyncio
import math
import re
import sys
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from shipper import watcher_state

from . import liveness
from .keys import CONFIG, METRICS, QUERY_ENGINE, SOURCE, STORE

routes = web.RouteTableDef()


@dataclass
class Metrics:
    requests: int = 0
    bytes_out: int = 0
    followers: int = 0  # open follow/tail connections right now
    answers: int = 0  # log answers being streamed right now (downloads; follow= ones also count as followers)
    tail_messages: int = 0
    tail_skipped_bytes: int = 0
    fanout_writes: int = 0  # writes of the fan-out to live followers (api/fanout.py)
    fanout_cpu: float = 0.0  # seconds of CPU its loops of writes took (the kernel's sends included)
    client_gone: int = 0  # downloads whose client went away before the end
    damaged_manifests: int = 0  # manifests refused as damaged (shipper/format/manifest.py loads)
    transfers_aborted: int = 0  # answers cut after they began: a byte could not be served (api/logs.py)
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
        "# TYPE logship_api_tail_fanout_writes_total counter",
        f"logship_api_tail_fanout_writes_total {m.fanout_writes}",
        "# TYPE logship_api_tail_fanout_cpu_seconds_total counter",
        f"logship_api_tail_fanout_cpu_seconds_total {m.fanout_cpu:.6f}",
        "# TYPE logship_api_downloads_cut_by_client_total counter",
        f"logship_api_downloads_cut_by_client_total {m.client_gone}",
        "# TYPE logship_api_damaged_manifests_total counter",
        f"logship_api_damaged_manifests_total {m.damaged_manifests}",
        "# TYPE logship_api_integrity_errors_total counter",
        f"logship_api_integrity_errors_total {request.app[SOURCE].integrity_errors}",
        "# TYPE logship_api_transfers_aborted_total counter",
        f"logship_api_transfers_aborted_total {m.transfers_aborted}",
        *(line for name in ("forwarded", "refused", "unreachable", "rejected") for line in (
            f"# TYPE logship_api_proxy_{name}_total counter",
            f"logship_api_proxy_{name}_total {getattr(m, 'proxy_' + name)}")),
    ]
    lines += request.app[QUERY_ENGINE].metrics()  # api/query.py: catalog objects left out of the logs view
    # the catalog (and pyarrow) is imported by the first listing, not for /metrics: zero until then
    cat = sys.modules.get("shipper.catalog")
    lines += _catalog_lines(cat.metrics(request.app[STORE]) if cat else dict.fromkeys(CATALOG_KEYS, 0.0))
    store_stats = {"api": request.app[STORE].stats.snapshot()}
    if request.app[SOURCE].spool is not None:
        try:
            state = await asyncio.to_thread(watcher_state.read, request.app[CONFIG].spool_dir)
        except (OSError, ValueError):
            state = None  # no watcher beside this API, or a file it did not write
        if state is not None:
            lines.append("# TYPE logship_watcher_healthy gauge")
            lines.append(f"logship_watcher_healthy {int(state.healthy)}")
            for k, v in sorted(_numbers(state.stats).items()):
                kind = "gauge" if k == "spool_bytes" else "counter"
                name = f"logship_watcher_{k}" + ("" if kind == "gauge" else "_total")
                lines += [f"# TYPE {name} {kind}", f"{name} {v}"]
            if state.store_stats is not None:
                store_stats["watcher"] = state.store_stats
        lines += await asyncio.to_thread(liveness.metric_lines, request.app[SOURCE].spool)
    lines += _store_lines(store_stats)
    return web.Response(body=("\n".join(lines) + "\n").encode(),
                        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


_METRIC_NAME = re.compile(r"[a-z_][a-z0-9_]{0,63}")


def _numbers(doc: Any) -> dict[str, int]:
    """The {name: integer} pairs of a counters object from the spool (a file others can write): the rest is left out."""
    if not isinstance(doc, dict):
        return {}
    return {k: int(v) for k, v in doc.items() if isinstance(k, str) and _METRIC_NAME.fullmatch(k)
            and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


CATALOG_METRICS = (  # catalog reader's counter -> (metric, type): the listings this API answered
    ("listings", "logship_catalog_listings_total", "counter"),
    ("listing_seconds", "logship_catalog_listing_seconds_total", "counter"),
    ("requests", "logship_catalog_requests_total", "counter"),
    ("head_records", "logship_catalog_head_records", "gauge"),  # pending compaction, at the last listing
    ("parts_in_force", "logship_catalog_parts", "gauge"),
    ("cache_bytes", "logship_catalog_cache_bytes", "gauge"),
    ("bad_objects", "logship_catalog_bad_objects_total", "counter"),
)


CATALOG_KEYS = tuple(key for key, _, _ in CATALOG_METRICS)


def _catalog_lines(m: dict[str, float]) -> list[str]:
    return [line for key, name, kind in CATALOG_METRICS for line in (f"# TYPE {name} {kind}", f"{name} {m[key]}")]


def _store_lines(by_process: dict[str, Any]) -> list[str]:
    """What each process's store client sent (shipper/store StoreStats): requests by operation, body bytes."""
    requests = ["# TYPE logship_store_requests_total counter"]
    sent = ["# TYPE logship_store_bytes_sent_total counter"]
    for by, snap in sorted(by_process.items()):
        for op, n in sorted(_numbers(snap.get("requests")).items()):
            requests.append(f'logship_store_requests_total{{op="{op}",by="{by}"}} {n}')
        sent.append(f'logship_store_bytes_sent_total{{by="{by}"}} {_numbers(snap).get("bytes_sent", 0)}')
    return requests + sent

