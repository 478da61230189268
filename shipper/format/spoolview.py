"""A view of a log beside its spool: the spool's state (SpoolState: run.json, exit.json, its segments) laid over the
store's manifest, and the next look at a running one taken from the spool alone (DESIGN §6.7: a follower beside
the spool costs no store request per look; shipper/format/reader.py `Reader.refresh`)."""

from __future__ import annotations

from shipper.format import names
from shipper.format.manifest import FINISHED, RUNNING, Manifest
from shipper.format.parts import LogView, SpoolState, merge, store_parts, unexplained_gap


def usable(doc: Manifest | None, state: SpoolState | None, gone: bool) -> SpoolState | None:
    """The spool's state if it is of the log the store names (or the store has none), else None."""
    if state is not None and doc is not None and state.run["run_id"] != doc.run_id:
        return None  # another run of this log is held in our spool; the store's is the one served
    if state is not None and gone and (state.dir / names.SHIPPED_FILE).exists():
        return None  # shipped, then deleted from the store (logship gc): the spool's leftovers are not it
    return state


def of_state(task: str, host: str, doc: Manifest | None, state: SpoolState, tag: str) -> LogView:
    """The log as the spool holds it, the store's parts (`doc`) where the spool no longer does (pruned)."""
    status = (state.exit or {}).get("status", FINISHED) if state.finished else RUNNING
    dropped = (list(doc.dropped) if doc is not None else []) + state.dropped
    # beside the spool, the spool holds the open segment whole: the store's deltas of it are not needed
    parts = merge(store_parts(doc), state.parts) if doc is not None else state.parts
    return LogView(task, host, state.run, status, state.exit, doc, state.dir, parts, dropped, tag)


def refreshed(view: LogView, state: SpoolState | None) -> LogView | None:
    """The next look at a running log beside the spool, from the spool's state alone: the view's manifest is
    kept. None when the spool shows what that manifest cannot explain — the log gone from the spool, another
    run, the log's end (its final answer is checked against a fresh manifest), or a part gone from the spool
    that the manifest does not cover (pruned after an upload it predates): then a whole view is taken."""
    if state is None or state.finished or state.dir != view.spool_dir or state.run["run_id"] != view.run["run_id"]:
        return None
    fresh = of_state(view.task, view.host, view.doc, state, view.manifest_tag)
    return None if unexplained_gap(fresh) else fresh
