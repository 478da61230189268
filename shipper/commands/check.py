"""`logship watch --check` and `logship serve --check`: the health of a running daemon, for systemd,
Kubernetes probes and monitoring. Exit 0 and one line saying so when healthy; else exit 1 and say what
is wrong and what to look at.

The watcher is judged by the state it writes to `<spool>/.watcher.json` after every pass (its pid, when,
whether the pass reached the store, and when one last did); the API by its `GET /readyz`, which answers
only when the API runs and its store answers.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from shipper import watcher_state
from shipper.config import Config
from shipper.config_values import parse_duration
from shipper.errors import LogshipError

EXIT_UNHEALTHY = 1
SERVE_TIMEOUT = 5.0  # seconds for the API's answer (/readyz gives its store 2 s)


def main(cfg: Config, args: Any) -> int:
    if args.cmd == "watch":
        max_age, max_failing = _duration("--max-age", args.max_age), _duration("--max-failing", args.max_failing)
        ok, message = check_watch(cfg, max_age, max_failing)
    else:
        ok, message = check_serve(cfg)
    print(f"logship {args.cmd} --check: {'OK' if ok else 'UNHEALTHY'}: {message}",
          file=sys.stdout if ok else sys.stderr)
    return 0 if ok else EXIT_UNHEALTHY


def _duration(flag: str, value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError:
        raise LogshipError(f"{flag} {value!r} is not a duration", "e.g. 90, 90s, 5m, 1h") from None


# --- the watcher ------------------------------------------------------------------------------


def check_watch(cfg: Config, max_age: float, max_failing: float, now_ns: int | None = None) -> tuple[bool, str]:
    """(healthy, why) of the watcher of `cfg`'s spool, from the state file it writes after every pass."""
    path = watcher_state.path(cfg.spool_dir)
    try:
        state = watcher_state.read(cfg.spool_dir)
    except FileNotFoundError:
        return False, (f"no watcher has run on the spool {cfg.spool_dir} ({path} is missing); start one: "
                       "`logship watch` (systemctl start logship-watch), with the same spool.dir")
    except (OSError, ValueError) as exc:
        return False, f"{path} cannot be read ({exc}); is spool.dir the watcher's?"
    pid, updated = state.pid, state.updated_ns
    if pid is None or updated is None:
        return False, f"{path} cannot be read (it has no pid or updated_ns); is spool.dir the watcher's?"
    now = time.time_ns() if now_ns is None else now_ns
    age = (now - updated) / 1e9
    if not _alive(pid):
        return False, (f"the watcher (pid {pid}) is not running; its last pass ended {_ago(age)} "
                       "(see its log: journalctl -u logship-watch)")
    if age > max_age:
        return False, (f"the watcher (pid {pid}) has not finished a pass for {_ago(age, False)} (limit "
                       f"{max_age:g}s): it is stuck, or one pass is shipping a large backlog (see its log)")
    store = state.store or "?"
    if not state.healthy:
        since = state.last_ok_ns or state.started_ns
        failing = (now - since) / 1e9 if since else None
        error = state.last_error or "unknown error"
        if failing is None or failing > max_failing:
            span = f"for {_ago(failing, False)}" if failing is not None else "since the watcher started"
            return False, (f"the watcher (pid {pid}) cannot reach the store {store} {span} (limit "
                           f"{max_failing:g}s): {error}. Output waits in the spool; check the store, the network "
                           "and the credentials")
        return True, (f"watcher pid {pid}, last pass {_ago(age)}; the store {store} has failed for "
                      f"{_ago(failing, False)} (limit {max_failing:g}s): {error}")
    stats = state.stats
    return True, (f"watcher pid {pid}, last pass {_ago(age)}, store {store} reachable; "
                  f"{stats.get('segments_uploaded', 0)} segments uploaded, spool {stats.get('spool_bytes', 0)} bytes")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it runs, as another user
    return True


def _ago(seconds: float | None, ago: bool = True) -> str:
    if seconds is None:
        return "?"
    text = f"{seconds:.1f}s" if seconds < 120 else f"{seconds / 60:.0f}m"
    return f"{text} ago" if ago else text


# --- the API ----------------------------------------------------------------------------------


def check_serve(cfg: Config, timeout: float = SERVE_TIMEOUT) -> tuple[bool, str]:
    """(healthy, why) of the API at api.listen: GET /readyz answers 200 only when its store answers too."""
    from shipper.commands.client import base_url

    url = base_url(cfg, None)
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=timeout) as resp:
            body = _json(resp.read())
    except urllib.error.HTTPError as exc:
        body = _json(exc.read())
        if exc.code == 503:
            return False, f"the API at {url} runs, but its store does not answer: {body.get('detail', body)}"
        return False, f"the API at {url} answered GET /readyz with {exc.code}: {body.get('detail', body)}"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, TimeoutError) or "timed out" in str(reason):
            return False, f"the API at {url} did not answer within {timeout:g}s"
        return False, (f"nothing answers at {url} ({reason}): is `logship serve` running with api.listen = "
                       f"{cfg.api.listen}? (systemctl status logship-api)")
    ms = (time.monotonic() - t0) * 1000
    return True, f"the API at {url} answers and its store answers ({ms:.0f} ms; store {body.get('store_ms', '?')} ms)"


def _json(raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
        return doc if isinstance(doc, dict) else {"detail": raw[:200].decode(errors="replace")}
    except ValueError:
        return {"detail": raw[:200].decode(errors="replace")}
