"""The catalog of logs: one row per (task, host, run), kept in the store itself (docs/format.md, "Catalog").

Writers (`note`, `forget`) add records when a manifest's status changes; readers (`list_logs`) answer a
page in requests that grow with the page; compaction folds records into Parquet parts; `rebuild` and
`check` work from the manifests, which stay the truth.
"""

from __future__ import annotations

from .compact import Compactor, Settings
from .filters import Cursor, Filters
from .reader import Reader, list_logs, list_rows, metrics
from .rebuild import check, rebuild
from .rows import Row
from .writer import Writer, forget, note

__all__ = ["Compactor", "Cursor", "Filters", "Reader", "Row", "Settings", "Writer", "check", "forget",
           "list_logs", "list_rows", "metrics", "note", "rebuild"]
