"""What the watcher knows of each log beyond its spool files, and the limits it reads the spool and store with."""

from __future__ import annotations

from dataclasses import dataclass, field

from shipper.format.manifest import Checkpoint, Segment

from ..checkpoint import Deltas
from ..errors import LogshipError

UPLOAD_CONCURRENCY = 3
TOMBSTONE_SECONDS = 7 * 86400  # how long a shipped log's run.json stays, to refuse a second run
STORE_PROBE_SECONDS = 60  # a watcher with nothing to ship still asks the store this often (one HEAD)
SET_ASIDE_RETRY_SECONDS = 60  # a log set aside (damaged) is looked at again this often, in case it was fixed
INDEX_MAX = 64 << 20  # a spool index larger than this is not one the agent wrote
ADOPT_MAX = 1 << 30  # a store segment a missing manifest no longer names is read back only up to this size
# A checkpoint is due this share of the interval early: passes that a wake-up brings between the periodic
# ones (watch()) would otherwise push a log off the periodic passes' phase, to up to two intervals.
DUE_EARLY = 0.25


@dataclass
class LogState:
    """What the watcher knows of one log beyond its spool files."""

    loaded: bool = False
    conflict: bool = False
    retired: bool = False  # `logship gc` is deleting it from the store: done with it
    segments: dict[int, Segment] = field(default_factory=dict)  # uploaded (maybe not yet committed)
    committed: set[int] = field(default_factory=set)  # named by the manifest in the store
    checkpoint: Checkpoint | None = None  # a prefix checkpoint the manifest names (shipper/checkpoint.py)
    deltas: Deltas = field(default_factory=Deltas)  # delta checkpoints the store holds (shipper/checkpoint.py)
    stale_keys: list[str] = field(default_factory=list)  # checkpoints to delete once the manifest moved on
    last_checkpoint: float = 0.0
    manifest_status: str | None = None
    dirty: bool = True
    copied: set[int] = field(default_factory=set)  # segments whose query copy step is done (manifest says so)
    copying: set[int] = field(default_factory=set)
    verified: set[int] = field(default_factory=set)  # sealed segments whose index was checked against their bytes
    damaged: set[int] = field(default_factory=set)  # segments found damaged (counted once)
    set_aside: str | None = None  # why the log is not shipped (a damaged spool file or manifest)
    set_aside_at: float = 0.0  # monotonic time it was last looked at
    # what the last prune saw (its sealed, committed and copied segments) and the wall time its oldest kept
    # segment may go: until either changes, a pass makes no prune hop (shipper/watcher/prune.py `due`)
    prune_seen: tuple[object, ...] = ()
    prune_at: float = 0.0


class ManifestDamaged(LogshipError):
    """The store holds a manifest for a log in our spool that is not a valid manifest: the log is set aside."""

    code = "manifest_damaged"
