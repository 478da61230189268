"""The watcher: ships the spool to the store (DESIGN §2), one per host.

Each pass seals the segments of agents that died, keeps the spool under its quota, uploads
sealed segments and a checkpoint of each open one, commits each log's manifest after the
objects it names, and prunes what the store holds. State comes from the store on start.

- `ship.py`: the Watcher, one pass (local_pass, then each log: _load, uploads, _commit);
- `damage.py`: a sealed segment's index checked against its bytes, repaired, what is lost recorded;
  a log whose files cannot be trusted set aside;
- `adopt.py`: a store with no manifest of a log: the segments it holds taken back after a check;
- `query_copies.py`: the query copy of each committed segment, in a queue of its own;
- `prune.py`: what the store holds deleted from the spool;
- `spool_total.py`: whether a pass needs the quota's scan of the whole spool (what it read bounds the total);
- `daemon.py`: `logship watch` (watch, main): wake-ups, periodic passes, retries;
- `state_file.py`: when the daemon rewrites its state file (health news at once, counters every few seconds);
- `state.py`: what the watcher knows of each log (LogState), and its limits.
The checkpoints and seals are shipper/checkpoint.py; the state file shipper/watcher_state.py.
"""

from .daemon import Alongside, main, watch
from .ship import Watcher
from .state import LogState, ManifestDamaged

__all__ = ["Alongside", "LogState", "ManifestDamaged", "Watcher", "main", "watch"]
