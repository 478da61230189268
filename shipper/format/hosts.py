"""Which hosts a task has logs on in the store: one delimited LIST of the task's prefix, then a HEAD of a
manifest per host named, so the cost grows with the hosts asked about, never with the objects or the archive."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from shipper.errors import ObjectNotFound
from shipper.store import Store

from . import names

HEAD_CONCURRENCY = 16


@dataclass(frozen=True)
class TaskHosts:
    """Hosts of a task with a manifest in the store, in name order: the first `want` found, and how many
    names after them were left unchecked (names may be stale: a log gc deleted, a server's lingering folder)."""

    hosts: list[str]
    unchecked: int = 0


async def hosts_of(store: Store, task: str, want: int = 1 << 30) -> TaskHosts:
    """The first `want` hosts (by name) that hold a log of `task`: `want=1` answers "has it any log?"."""
    found: list[str] = []
    candidates = [h for h in await store.list_dirs(names.task_prefix(task)) if names.ID_RE.fullmatch(h)]
    at = 0
    while at < len(candidates) and len(found) < want:
        # in batches: most names are logs, so one batch usually finds what is wanted
        batch = candidates[at:at + max(1, min(HEAD_CONCURRENCY, want - len(found)))]
        at += len(batch)
        held = await asyncio.gather(*(has_log(store, task, h) for h in batch))
        found += [h for h, ok in zip(batch, held, strict=True) if ok]
    return TaskHosts(found[:want], len(candidates) - at)


async def has_log(store: Store, task: str, host: str) -> bool:
    """Whether the store holds a manifest of `task` on `host` (one HEAD)."""
    try:
        await store.head(names.manifest_key(task, host))
    except ObjectNotFound:
        return False
    return True
