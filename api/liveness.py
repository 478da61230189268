"""A log's liveness as the API beside its spool serves it: the `liveness` object of one log's metadata,
read from the agent's liveness.json (issue 15).

liveness.json is a spool file others can write: shipper/format/liveness.py checks it, and a missing or bad
one is no liveness (the key is left out), never an error of the answer.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from shipper.format import liveness, names


def of_log(spool_dir: Path | None, running: bool) -> dict[str, Any] | None:
    """The `liveness` object of a log held in this spool, or None. A running log's silence is counted to
    now (the agent writes every agent.sample_seconds); a finished log's last sample keeps its silence at
    the end."""
    if spool_dir is None:
        return None
    doc = liveness.read(spool_dir / names.LIVENESS_FILE)
    return None if doc is None else doc.to_json(time.time_ns() if running else None)
