"""Logging for every `logship` command: one setup (level, text or JSON lines on stderr), and `event()`,
one line per meaningful event whose fields the JSON form carries as keys (docs/operations.md, "Logs").

Text reads as a sentence; JSON lines are for log collectors: `ts`, `level`, `logger`, `msg`, `event`
and the event's fields (anything given with `extra=`), plus `exc` with the traceback of an error.
"""

from __future__ import annotations

import json
import logging
import re
import string
import sys
import time
import traceback
from types import TracebackType
from typing import Any

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
# Other libraries' chatter, quiet unless asked for by name (--log-level info,watchfiles=debug): watchfiles
# says "N changes detected" at INFO for every spool write; aiohttp.access is a line per HTTP request;
# botocore at DEBUG prints every request's headers.
QUIET = ("watchfiles", "aiohttp.access", "botocore", "aiobotocore", "urllib3", "s3transfer", "asyncio")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# what a URL may carry that must not reach a log: the tail's and download links' ?token= (docs/security.md)
_TOKEN_RE = re.compile(r"(?i)(\btoken=)[^&\s\"']+")
# the attributes every LogRecord has; anything else on a record came with extra= and is an event field
_RECORD_KEYS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime",
                                                                                      "taskName"}
_json_mode = False


def parse_level(spec: str) -> tuple[int, dict[str, int]]:
    """`info` or `info,watchfiles=debug,aiohttp.access=info`: the level, and levels of named loggers.

    Raises ValueError naming what is wrong."""
    base: int | None = None
    named: dict[str, int] = {}
    for part in (p.strip() for p in spec.split(",")):
        name, sep, level = part.rpartition("=")
        if level.lower() not in LEVELS or (sep and not name) or (not sep and base is not None):
            raise ValueError(f"{part!r} is not LEVEL or LOGGER=LEVEL (levels: {', '.join(LEVELS)})")
        if sep:
            named[name] = logging.getLevelName(level.upper())
        else:
            base = logging.getLevelName(level.upper())
    return (logging.INFO if base is None else base), named


def setup(level: str = "info", fmt: str = "text", *, stream: Any = None) -> None:
    """Configure the root logger once for the whole process: a handler on stderr, `level` for logship's
    own loggers, and the QUIET libraries at WARNING unless `level` names them."""
    global _json_mode
    base, named = parse_level(level)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(TEXT_FORMAT))
    handler.addFilter(_redact_tokens)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(base)
    for name in QUIET:
        logging.getLogger(name).setLevel(max(base, logging.WARNING))
    for name, lvl in named.items():
        logging.getLogger(name).setLevel(lvl)
    logging.captureWarnings(True)
    _json_mode = fmt == "json"
    sys.excepthook = _giving_up


def setup_from(level: str | None, fmt: str | None, cfg: Any = None) -> None:
    """setup() from the command's flags, else the config's logging section (a LoggingConfig), else defaults."""
    from shipper.errors import LogshipError

    level = level or (cfg.level if cfg is not None else "info")
    try:
        setup(level, fmt or (cfg.format if cfg is not None else "text"))
    except ValueError as exc:
        raise LogshipError(f"--log-level {level!r}: {exc}", "e.g. --log-level debug, or "
                           "--log-level info,aiohttp.access=info for one line per HTTP request") from None


def command_failed(exc: Exception) -> None:
    """A command's error, said once on stderr: `logship: what (hint)`, or a JSON line in JSON mode."""
    if not _json_mode:
        print(f"logship: {exc}", file=sys.stderr)
        return
    fields = {k: v for k in ("detail", "hint") if isinstance(v := getattr(exc, k, None), str)}
    event(logging.getLogger("logship"), "giving_up", "giving up: {error}", level=logging.ERROR, error=str(exc),
          **fields)


class _Message:
    """A message rendered from its fields when (and only if) a handler formats it."""

    __slots__ = ("template", "fields")

    def __init__(self, template: str, fields: dict[str, Any]) -> None:
        self.template = template
        self.fields = fields

    def __str__(self) -> str:
        return _Fields().format(self.template, **self.fields)


class _Fields(string.Formatter):
    def format_field(self, value: Any, format_spec: str) -> str:
        if value is None:  # an exit code of a lost log: "none" reads better than "None"
            return "none"
        return str(super().format_field(value, format_spec))


def event(logger: logging.Logger, name: str, template: str, /, *, level: int = logging.INFO,
          exc_info: Any = None, **fields: Any) -> None:
    """Log one event: `template` is a str.format() sentence over `fields` (the text form); the JSON
    form carries `event: name` and every field as a key. Field names must not be LogRecord attributes."""
    if logger.isEnabledFor(level):
        logger.log(level, _Message(template, fields), extra={"event": name, **fields}, exc_info=exc_info,
                   stacklevel=2)


def _utc(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


class TextFormatter(logging.Formatter):
    """The sentence with a UTC timestamp: `2026-12-04T21:14:02.123Z INFO logship.watcher ...`."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 (logging's name)
        return _utc(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, the event's fields, and exc for an error."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"ts": _utc(record), "level": record.levelname.lower(), "logger": record.name,
                               "msg": record.getMessage()}
        for key, value in record.__dict__.items():
            if key not in _RECORD_KEYS and key not in out:
                out[key] = value
        if record.exc_info:
            out["exc"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        return json.dumps(out, default=str, ensure_ascii=False)


def _redact_tokens(record: logging.LogRecord) -> bool:
    """Takes ?token=… out of any line (aiohttp's access log quotes request lines)."""
    if isinstance(record.msg, str) and "token=" in record.msg.lower():
        record.msg = _TOKEN_RE.sub(r"\1<redacted>", record.msg)
    for key, value in record.__dict__.items():
        if key not in _RECORD_KEYS and isinstance(value, str) and "token=" in value.lower():
            setattr(record, key, _TOKEN_RE.sub(r"\1<redacted>", value))
    if isinstance(record.args, tuple) and any(isinstance(a, str) and "token=" in a.lower() for a in record.args):
        record.msg, record.args = _TOKEN_RE.sub(r"\1<redacted>", record.getMessage()), ()
    return True


def _giving_up(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    """An error nothing handled ends the process: said as one log event (one JSON line in JSON mode)."""
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, exc, tb)
        return
    event(logging.getLogger("logship"), "giving_up", "giving up: {error}", level=logging.CRITICAL,
          error=f"{kind.__name__}: {exc}", exc_info=(kind, exc, tb))
