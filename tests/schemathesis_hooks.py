"""Schemathesis hooks for tests/test_schemathesis.py (loaded by the schemathesis CLI through SCHEMATHESIS_HOOKS).

OpenAPI cannot say that two query parameters exclude each other: `stream=` with `start=` on …/log, and
`from=` with `lines=` on …/tail, are a 400 by design (their descriptions say so), so generated requests
that combine them are left out.
"""

from __future__ import annotations

from typing import Any

import schemathesis

EXCLUSIVE = {"log": ("stream", "start"), "tail": ("from", "lines")}  # route's last path part: the pair


@schemathesis.hook
def filter_query(ctx: Any, query: dict[str, Any] | None) -> bool:
    op = getattr(ctx, "operation", None)
    if op is None or not query:
        return True
    pair = EXCLUSIVE.get(str(op.path).rsplit("/", 1)[-1])
    return pair is None or not (pair[0] in query and pair[1] in query)

