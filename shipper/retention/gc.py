"""Retention: `logship gc` deletes whole logs by age, status and labels (docs/format.md, "Deleting a log").

A log is deleted in an order that leaves nothing half-visible, whenever the process stops:
1. a marker `deleting/<task>/<host>.json` (SQL's `lines` leaves the log out from then on), then the
   manifest with status `deleting` (the API and the `logs` view leave it out);
2. after `query.grace_seconds` (queries and downloads that started before step 1 finish): its segments,
   indexes, checkpoints and query copies; compacted parts that hold its lines are rewritten without them;
3. the manifest, once nothing else of the log is left, and the marker last.
The next run finds the markers and finishes what a stopped run began. Running logs are never selected.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shipper import catalog
from shipper.config import Config
from shipper.errors import ObjectNotFound
from shipper.format import manifest, names
from shipper.format.manifest import Manifest
from shipper.query import lineset
from shipper.query.compact import Compactor, Deleter, Settings
from shipper.store import ObjectInfo, Store

log = logging.getLogger("logship.gc")

FETCH_CONCURRENCY = 16
CATALOG_PAGE = 1000  # catalog rows per page while selecting
DELETABLE = (manifest.FINISHED, manifest.LOST)


@dataclass(frozen=True)
class Policy:
    older_than_s: float
    statuses: frozenset[str] = frozenset(DELETABLE)
    labels: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, cfg: Config, older_than_s: float | None = None, statuses: list[str] | None = None,
           labels: dict[str, str] | None = None) -> Policy:
        r = cfg.retention
        return cls(r.older_than if older_than_s is None else older_than_s,
                   frozenset(r.status if statuses is None else statuses),
                   tuple(sorted((r.labels if labels is None else labels).items())))

    def selects(self, doc: Manifest, now_ns: int) -> bool:
        """Whether the policy deletes this log: never a running one, nor one whose manifest changed lately."""
        if doc.status not in DELETABLE or doc.status not in self.statuses:
            return False
        if any(doc.labels.get(k) != v for k, v in self.labels):
            return False
        return now_ns - last_change_ns(doc) >= self.older_than_s * 1e9


def last_change_ns(doc: Manifest) -> int:
    """When the log last changed: its end, or its manifest's last write if later (a watcher still at work)."""
    return max(doc.ended_ns or 0, doc.updated_ns or 0, doc.started_ns)


@dataclass
class Victim:
    task: str
    host: str
    doc: Manifest | None  # its manifest, if still there
    marker: dict[str, Any] | None  # its marker, once written
    objects: int = 0  # what the store holds of it (before this run)
    bytes: int = 0
    copies: int = 0  # of the objects, query copies (lines/date=…/task=…/host=…/)
    hidden_ns: int = 0  # since when every reader leaves it out

    @property
    def id(self) -> str:
        return lineset.log_id(self.task, self.host)


@dataclass
class Report:
    selected: list[Victim] = field(default_factory=list)
    deleted_logs: int = 0
    objects: int = 0
    bytes: int = 0
    parts_rewritten: int = 0
    bytes_rewritten: int = 0  # written: the parts that replace them
    pending: int = 0  # logs left for the next run (grace period not over)


class Collector:
    """Runs gc over one store."""

    def __init__(self, store: Store, cfg: Config, *, grace_s: float | None = None,
                 say: Callable[[str], None] = lambda _: None, clock: Callable[[], int] = time.time_ns) -> None:
        self.store = store
        self.grace_s = cfg.query.grace_seconds if grace_s is None else grace_s
        self.deleter = Deleter(store)
        self.compactor = Compactor(store, Settings(cfg.compact.small_bytes, cfg.compact.part_bytes, self.grace_s),
                                   self.deleter, clock)
        self.say = say
        self.clock = clock

    async def run(self, policy: Policy, *, dry_run: bool = False, wait: bool = True, sweep: bool = False) -> Report:
        """One gc pass. `sweep`: select from every manifest, not the catalog (see _select)."""
        report = Report()
        before = (self.deleter.objects, self.deleter.bytes)
        victims = await self._select(policy, sweep)
        report.selected = victims
        for v in victims:
            if dry_run:
                state = "would resume" if v.marker else "would delete"
            else:
                state = "resumed" if v.marker else "deletes"
            status = (v.doc.status_before_deleting or v.doc.status) if v.doc else "?"
            when = f", ended {_age((self.clock() - last_change_ns(v.doc)) / 1e9)} ago" if v.doc else ""
            self.say(f"{state} {v.id}: {status}{when}, {v.objects} objects, {v.bytes} bytes "
                     f"({v.copies} of them query copies)")
        if dry_run or not victims:
            return report
        for v in victims:
            await self._mark(v)
        # Outside engines read the published set (shipper/query/published.py): it leaves these logs out from now,
        # and the grace starts once it says so.
        await self.compactor.publish()
        for v in victims:
            v.hidden_ns = max(v.hidden_ns, self.clock())
        while True:
            now = self.clock()
            ready = [v for v in victims if now - v.hidden_ns >= self.grace_s * 1e9]
            if len(ready) == len(victims) or not wait:
                break
            first = min(v.hidden_ns for v in victims if v not in ready)
            delay = max(0.05, (first + self.grace_s * 1e9 - now) / 1e9)
            self.say(f"waiting {delay:.0f} s (query.grace_seconds) for queries and downloads that started before")
            await asyncio.sleep(delay)
        for v in ready:
            await self._delete_data(v)
        left = await self._purge({v.id for v in ready}, wait, report)
        for v in ready:
            if v.id in left:
                continue
            if v.doc is not None:
                await catalog.forget(self.store, v.doc)  # a tombstone before the manifest goes: never a ghost row
                await self.deleter.delete([names.manifest_key(v.task, v.host)])
            await self.deleter.delete([names.deleting_key(v.task, v.host)])
            report.deleted_logs += 1
        report.pending = len(victims) - report.deleted_logs
        await self.compactor.publish()  # the deleted logs' names leave the published set
        report.objects, report.bytes = self.deleter.objects - before[0], self.deleter.bytes - before[1]
        return report

    async def _candidates(self, policy: Policy) -> set[tuple[str, str]]:
        """(task, host) of the logs the catalog says the policy may select: its rows of runs that started
        before the cutoff, paged oldest-last; their manifests (the truth) decide. Costs what those rows
        cost, not the archive (a log the catalog does not know is the sweep's: `sweep`)."""
        cutoff = self.clock() - int(policy.older_than_s * 1e9)
        only = next(iter(policy.statuses)) if len(policy.statuses) == 1 else None
        f = catalog.Filters(until=cutoff + 1, status=only, labels=policy.labels)
        out: set[tuple[str, str]] = set()
        cursor: catalog.Cursor | None = None
        while True:
            page, cursor = await catalog.list_rows(self.store, f, cursor, CATALOG_PAGE)
            out.update((r.task, r.host) for r in page
                       if r.status in policy.statuses and max(r.ended_ns or 0, r.version_ns, r.started_ns) <= cutoff)
            if cursor is None:
                return out

    async def _select(self, policy: Policy, sweep: bool = False) -> list[Victim]:
        """Logs the policy selects, and logs an earlier run began to delete (they have a marker). From the
        catalog's rows; with `sweep`, from every manifest under logs/ (the slow path, for logs the catalog
        does not know: written before it, or a note lost with its watcher)."""
        per_log = await _per_log(self.store) if sweep else {}
        sem = asyncio.Semaphore(FETCH_CONCURRENCY)

        async def get_json(key: str) -> dict[str, Any] | None:
            async with sem:
                try:
                    doc = json.loads(await self.store.get(key))
                except (ObjectNotFound, ValueError):
                    return None
            return doc if isinstance(doc, dict) else None

        async def get_manifest(task: str, host: str) -> Manifest | None:
            key = names.manifest_key(task, host)
            async with sem:
                try:
                    return Manifest.load(await self.store.get(key), task, host)
                except ObjectNotFound:
                    return None
                except manifest.ManifestError as exc:
                    log.warning("gc leaves %s alone: a damaged manifest (%s)", key, exc)
                    return None

        markers = [m for o in await self.store.list(names.DELETING_PREFIX) if (m := names.parse_deleting_key(o.key))]
        if sweep:
            manifests = [(t, h) for (t, h), objs in per_log.items()
                         if any(o.key == names.manifest_key(t, h) for o in objs)]
        else:  # a marked log's manifest too: the run that finishes its deletion deletes it
            manifests = sorted(await self._candidates(policy) | set(markers))
        docs = dict(zip(manifests, await asyncio.gather(*(get_manifest(t, h) for t, h in manifests)), strict=True))
        marker_docs = dict(zip(markers, await asyncio.gather(*(get_json(names.deleting_key(*m)) for m in markers)),
                               strict=True))
        now = self.clock()
        out = []
        for (t, h), doc in sorted(docs.items()):
            if doc is None or (t, h) in marker_docs:
                continue
            if doc.status == manifest.DELETING or policy.selects(doc, now):
                out.append(Victim(t, h, doc, None))
        for m, mdoc in sorted(marker_docs.items()):
            out.append(Victim(m[0], m[1], docs.get(m), mdoc or {"marked_ns": 0, "dates": []}))
        async def copies(v: Victim) -> tuple[list[ObjectInfo], list[ObjectInfo]]:
            """What the store holds of the log, and its query copies (what _delete_data deletes too)."""
            dates = (v.marker or {}).get("dates", []) if v.marker is not None else _dates(v.doc)
            async with sem:
                own = per_log.get((v.task, v.host))
                if own is None:
                    own = await self.store.list(names.log_prefix(v.task, v.host))
                return own, [o for d in dates for o in await self.store.list(names.lines_partition(d, v.task, v.host))]

        for v, (own, extra) in zip(out, await asyncio.gather(*(copies(v) for v in out)), strict=True):
            objs = own + extra
            v.objects, v.bytes, v.copies = len(objs), sum(o.size for o in objs), len(extra)
        return out

    async def _mark(self, v: Victim) -> None:
        """Step 1: the marker, then the manifest's status (also for a log a stopped run marked only); nothing
        is deleted yet."""
        if v.marker is None:
            assert v.doc is not None
            dates = _dates(v.doc)
            v.marker = {"task": v.task, "host": v.host, "run_id": v.doc.run_id, "marked_ns": self.clock(),
                        "dates": dates}
            await self.store.put(names.deleting_key(v.task, v.host), json.dumps(v.marker).encode())
        v.hidden_ns = v.marker.get("marked_ns", 0)
        if v.doc is not None and v.doc.status != manifest.DELETING:
            v.hidden_ns = max(v.hidden_ns, self.clock())  # the API hides it from now: the grace starts now
            doc = v.doc.replace(status=manifest.DELETING, deleting_ns=v.hidden_ns, status_before_deleting=v.doc.status)
            await self.store.put(names.manifest_key(v.task, v.host), doc.dump())
            v.doc = doc
        if v.doc is not None:  # also on a resumed run: a crash may have come between the manifest and this
            await catalog.note(self.store, v.doc)  # the listing hides it from now, as the manifest says

    async def _delete_data(self, v: Victim) -> None:
        """Step 2: everything of the log but its manifest (and its marker)."""
        sizes: dict[str, int] = {}
        keys: list[str] = []
        for o in await self.store.list(names.log_prefix(v.task, v.host)):
            if o.key != names.manifest_key(v.task, v.host):
                keys.append(o.key)
                sizes[o.key] = o.size
        for date in (v.marker or {}).get("dates", []):
            for o in await self.store.list(names.lines_partition(date, v.task, v.host)):
                keys.append(o.key)
                sizes[o.key] = o.size
        await self.store.abort_uploads(names.log_prefix(v.task, v.host))
        await self.deleter.delete(keys, sizes)

    async def _purge(self, gone: set[str], wait: bool, report: Report) -> set[str]:
        """Rewrite the compacted parts that hold lines of `gone` logs, and (with `wait`) delete them once
        safe. Returns the logs some part in the store still holds."""
        if not gone:
            return set()
        last: tuple[str, ...] = ()
        while True:
            stats = await self.compactor.run(merge=False, purge=gone)
            report.parts_rewritten += stats.parts_written
            report.bytes_rewritten += stats.bytes_written
            st = await self.compactor.state()
            holding = tuple(sorted(p.key for p in st.parts.values() if p.logs & gone))
            left = {x for k in holding for x in st.parts[k].logs & gone}
            if not holding or not wait or (holding == last and not stats.waiting):
                return left
            last = holding
            # The rewritten parts are replaced now; they go once what replaced them is due (Compactor.finish).
            newest = max([p.created_ns for p in st.snapshot.shown if p.key not in st.done]
                         + [p.created_ns for p in st.snapshot.losers], default=self.clock())
            delay = (newest + self.compactor.due_after_ns - self.clock()) / 1e9
            if delay > 0:
                self.say(f"waiting {delay:.0f} s (2 x query.grace_seconds) to delete {len(holding)} "
                         "compacted parts that held these logs' lines")
            await asyncio.sleep(max(0.05, delay))


async def _per_log(store: Store) -> dict[tuple[str, str], list[ObjectInfo]]:
    """Every object under logs/, per log (the sweep's one LIST of the whole archive)."""
    per_log: dict[tuple[str, str], list[ObjectInfo]] = {}
    for o in await store.list(names.LOGS_PREFIX):
        parsed = names.parse_log_prefix(o.key)
        if parsed:
            per_log.setdefault(parsed, []).append(o)
    return per_log


def _dates(doc: Manifest | None) -> list[str]:
    """The date partitions of a log's query copies (lines/date=…/task=…/host=…/), from its manifest."""
    return sorted({names.lines_date(s.first_ts) for s in doc.parts if s.first_ts}) if doc is not None else []


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


# --- an S3 lifecycle configuration that does the same by object age ------------------------------


def lifecycle(prefix: str, older_than_s: float) -> dict[str, Any]:
    """S3 lifecycle rules expiring what `gc --older-than` deletes, and aborting stale multipart uploads.

    S3 counts an object's age from its upload, not from the log's end, and knows neither status nor
    labels: a log running longer than the period loses its oldest segments. `logship gc` does not.
    """
    days = max(1, -(-int(older_than_s) // 86400))
    prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
    rules: list[dict[str, Any]] = [
        {"ID": f"logship-expire-{what.rstrip('/')}", "Status": "Enabled", "Filter": {"Prefix": prefix + what},
         "Expiration": {"Days": days}}
        # a finished log's manifest is its newest object (rewritten at the end), so it expires last
        for what in (names.LOGS_PREFIX, names.LINES_PREFIX, names.COMPACT_PREFIX, names.DELETING_PREFIX)
    ]
    rules.append({"ID": "logship-abort-incomplete-uploads", "Status": "Enabled", "Filter": {"Prefix": prefix},
                  "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}})
    return {"Rules": rules}


# --- the command ---------------------------------------------------------------------------------


def main(cfg: Config, args: Any) -> int:
    """`logship gc --older-than DURATION [--status finished,lost] [--label k=v]... [--dry-run] [--lifecycle]`."""
    import sys

    from shipper.config_values import parse_duration
    from shipper.errors import LogshipError

    older = cfg.retention.older_than
    if args.older_than is not None:
        try:
            older = parse_duration(args.older_than)
        except ValueError:
            raise LogshipError(f"--older-than {args.older_than!r} is not a duration", "e.g. 30d, 12h, 90m") from None
    if older <= 0 and args.older_than is None:
        raise LogshipError("no age given", "pass --older-than DURATION (e.g. 30d) or set retention.older_than")
    statuses = None
    if args.status is not None:
        statuses = [s.strip() for s in args.status.split(",") if s.strip()]
        if not statuses or any(s not in DELETABLE for s in statuses):
            raise LogshipError(f"--status {args.status!r} is not allowed",
                               "a comma-separated list of finished and lost; running logs are never deleted")
    labels = None
    if args.label:
        labels = {}
        for item in args.label:
            k, sep, v = item.partition("=")
            if not sep or not k:
                raise LogshipError(f"bad --label {item!r}", "labels are key=value, e.g. --label team=infra")
            labels[k] = v
    if args.lifecycle:
        if statuses is not None or labels is not None:
            print("logship: an S3 lifecycle rule knows neither status nor labels: --status and --label are "
                  "left out", file=sys.stderr)
        print("logship: S3 counts an object's age from its upload, so a log running longer than "
              f"{_age(older)} loses its oldest segments; logship gc never deletes a running log", file=sys.stderr)
        prefix = cfg.store.url.removeprefix("s3://").partition("/")[2] if cfg.store.url.startswith("s3://") else ""
        print(json.dumps(lifecycle(prefix, older), indent=2))
        return 0
    policy = Policy.of(cfg, older, statuses, labels)
    return asyncio.run(_run(cfg, policy, dry_run=args.dry_run, wait=not args.no_wait, sweep=args.sweep))


async def _run(cfg: Config, policy: Policy, *, dry_run: bool, wait: bool, sweep: bool) -> int:
    from shipper.store import open_store

    store = open_store(cfg.store)
    try:
        c = Collector(store, cfg, say=lambda m: print(m, flush=True))
        r = await c.run(policy, dry_run=dry_run, wait=wait, sweep=sweep)
    finally:
        await store.close()
    selected = len(r.selected)
    if dry_run:
        print(f"would delete {selected} logs: {sum(v.objects for v in r.selected)} objects, "
              f"{sum(v.bytes for v in r.selected)} bytes with their query copies; compacted parts that hold "
              "their lines would be rewritten without them (--dry-run: nothing deleted)")
        return 0
    print(f"deleted {r.deleted_logs} logs: {r.objects} objects ({r.bytes} bytes), "
          f"{r.bytes - r.bytes_rewritten} bytes freed"
          + (f"; {r.parts_rewritten} compacted parts rewritten without them ({r.bytes_rewritten} bytes)"
             if r.parts_rewritten else "")
          + (f"; {r.pending} logs hidden now, finished by the next run" if r.pending else ""))
    return 0
