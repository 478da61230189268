"""Configuration: defaults, the YAML file, LOGSHIP_<SECTION>_<KEY> overrides, and validation.

Every key is declared once below with its default; config/logship.yaml documents the same keys.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config_values import (
    GiB,
    KiB,
    MiB,
    _api_url,
    _bool,
    _choice,
    _count,
    _duration,
    _label_map,
    _listen,
    _log_level,
    _off_or,
    _opt_text,
    _proxy_allow,
    _size,
    _statuses,
    _store_url,
    _text,
    _token,
    _tokens,
)
from .errors import ConfigError

DEFAULT_CONFIG_FILE = "logship.yaml"


@dataclass(frozen=True)
class SpoolConfig:
    dir: str = "./.logship/spool"
    segment_bytes: int = 16 * MiB
    segment_seconds: float = 600.0
    quota_bytes: int = 4 * GiB
    keep_uploaded_seconds: float = 600.0


@dataclass(frozen=True)
class StoreConfig:
    url: str = "file://./.logship/archive"
    endpoint: str = ""
    region: str = "us-east-1"
    compression: str = "zstd"
    access_key: str = ""
    secret_key: str = ""


@dataclass(frozen=True)
class WatchConfig:
    checkpoint_seconds: float = 5.0
    api_url: str = ""
    # issue 14 (docs/checkpoints.md): each byte uploaded once. False: the prefix checkpoints of before, kept for
    # one release (their objects stay readable for ever)
    checkpoint_deltas: bool = True
    # the state file (`--check`, `/metrics`): health news at once, counters at most this often (0: every pass)
    state_seconds: float = 10.0


@dataclass(frozen=True)
class ApiConfig:
    listen: str = "127.0.0.1:8080"
    tokens: list[str] = field(default_factory=list)
    query_tokens: list[str] = field(default_factory=list)
    proxy_allow: list[str] = field(default_factory=list)  # empty: a central API never forwards
    proxy_token: str = ""  # the central API's own token for the node APIs it forwards to


@dataclass(frozen=True)
class QueryConfig:
    timeout_seconds: float = 30.0
    max_rows: int = 10_000
    memory_bytes: int = 512 * MiB
    threads: int = 2
    copy: bool = True
    grace_seconds: float = 60.0


@dataclass(frozen=True)
class RetentionConfig:
    older_than: float = 0.0  # 0: `logship watch` deletes nothing
    status: list[str] = field(default_factory=lambda: ["finished", "lost"])
    labels: dict[str, str] = field(default_factory=dict)
    every: float = 3600.0
    sweep_every: float = 7 * 86400.0  # 0: never read every manifest (shipper/retention/gc.py `sweep`)


@dataclass(frozen=True)
class CompactConfig:
    every: float = 3600.0  # 0: `logship watch` does not compact
    catalog_every: float = 600.0  # the catalog's records (shipper/catalog/compact.py); 0: never
    small_bytes: int = 4 * MiB
    part_bytes: int = 32 * MiB


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "info"  # watchfiles' and aiohttp's access log stay quiet unless named: info,aiohttp.access=info
    format: str = "text"  # or json: one object per line, for log collectors


@dataclass(frozen=True)
class AgentConfig:
    sample_seconds: float = 5.0  # how often `logship run` samples its task's processes into liveness.json
    silence_timeout: float = 0.0  # 0: off; else --silence-timeout's default (shipper/liveness.py)
    on_silence: str = "warn"
    silence_grace: float = 10.0  # from TERM to KILL when on_silence is kill
    merge_streams: bool = False  # one pipe for stdout and stderr (2>&1): exact order, no split


@dataclass(frozen=True)
class Config:
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    watch: WatchConfig = field(default_factory=WatchConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    query: QueryConfig = field(default_factory=QueryConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    compact: CompactConfig = field(default_factory=CompactConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    source: str = "defaults"  # where it came from, for `logship config`
    origins: dict[str, str] = field(default_factory=dict, compare=False)  # "section.key": "file PATH" | "env VAR"

    @property
    def spool_dir(self) -> Path:
        return Path(self.spool.dir)


# Each key's checker; its docstring says what is allowed, and the error message quotes it.
CHECKS: dict[str, dict[str, Callable[[Any], Any]]] = {
    "spool": {
        "dir": _text,
        "segment_bytes": _size(64 * KiB, 1 * GiB),
        "segment_seconds": _duration(1, 7 * 86400),
        "quota_bytes": _size(1 * MiB, 1 << 50),
        "keep_uploaded_seconds": _duration(0, 365 * 86400),
    },
    "store": {
        "url": _store_url,
        "endpoint": _opt_text,
        "region": _text,
        "compression": _choice("zstd", "none"),
        "access_key": _opt_text,
        "secret_key": _opt_text,
    },
    "watch": {"checkpoint_seconds": _duration(0.1, 60), "api_url": _api_url, "checkpoint_deltas": _bool,
              "state_seconds": _duration(0, 60)},
    "api": {"listen": _listen, "tokens": _tokens, "query_tokens": _tokens, "proxy_allow": _proxy_allow,
            "proxy_token": _token},
    "query": {"timeout_seconds": _duration(0.1, 3600), "max_rows": _count(1, 10_000_000),
              "memory_bytes": _size(64 * MiB, 1 << 40), "threads": _count(1, 256),
              "copy": _bool, "grace_seconds": _duration(0, 86400)},
    "retention": {"older_than": _duration(0, 100 * 365 * 86400), "status": _statuses, "labels": _label_map,
                  "every": _duration(1, 7 * 86400), "sweep_every": _duration(0, 365 * 86400)},
    "compact": {"every": _duration(0, 7 * 86400), "catalog_every": _duration(0, 86400),
                "small_bytes": _size(1 * KiB, 1 * GiB),
                "part_bytes": _size(1 * MiB, 4 * GiB)},
    "logging": {"level": _log_level, "format": _choice("text", "json")},
    "agent": {"sample_seconds": _duration(0.1, 3600), "silence_timeout": _off_or(_duration(1, 30 * 86400)),
              "on_silence": _choice("warn", "kill"), "silence_grace": _duration(0, 3600),
              "merge_streams": _bool},
}
# Keys whose values are never printed: not by `logship config`, not in an error about them.
SECRETS = {("api", "tokens"), ("api", "query_tokens"), ("api", "proxy_token"), ("store", "access_key"),
           ("store", "secret_key")}
# LOGSHIP_ variables that are not config keys (LOGSHIP_<SECTION>_<KEY>); any other is a mistake.
OTHER_ENV = ("LOGSHIP_CONFIG", "LOGSHIP_TOKEN", "LOGSHIP_IBEX_TASK", "LOGSHIP_VENV", "LOGSHIP_UPDATE_SCREENSHOT",
             "LOGSHIP_RUN_ID")
SECTIONS = {"spool": SpoolConfig, "store": StoreConfig, "watch": WatchConfig, "api": ApiConfig,
            "query": QueryConfig, "retention": RetentionConfig, "compact": CompactConfig, "logging": LoggingConfig,
            "agent": AgentConfig}


def _check(section: str, key: str, value: Any, origin: str) -> Any:
    checks = CHECKS[section]
    if key not in checks:
        raise ConfigError(f"{origin}: unknown key {section}.{key}", f"known keys of {section}: {', '.join(checks)}")
    check = checks[key]
    try:
        return check(value)
    except (ValueError, TypeError) as exc:
        why = f": {exc}" if isinstance(exc, ValueError) and exc.args else ""
        if (section, key) in SECRETS:  # its value is not shown: it may hold valid secrets beside a bad one
            raise ConfigError(f"{origin}: {section}.{key} (a secret, not shown) is not allowed{why}",
                              f"expected {check.__doc__}") from None
        raise ConfigError(f"{origin}: {section}.{key} = {value!r} is not allowed{why}",
                          f"expected {check.__doc__}") from None


def load_config(path: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None) -> Config:
    """Defaults, then the YAML file (`path`, else ./logship.yaml if present), then LOGSHIP_* variables."""
    env = dict(os.environ) if env is None else env
    values: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    source = "defaults"
    if path is None and Path(DEFAULT_CONFIG_FILE).is_file():
        path = DEFAULT_CONFIG_FILE
    if path is not None:
        values, source = _read_yaml(Path(path)), str(path)
    origins = {f"{s}.{k}": f"file {path}" for s, body in values.items() for k in body}
    for name, raw in env.items():
        if not name.startswith("LOGSHIP_"):
            continue
        if name in OTHER_ENV:
            continue
        section, _, key = name[len("LOGSHIP_"):].lower().partition("_")
        if section not in SECTIONS:
            raise ConfigError(f"environment {name}: unknown section {section!r}",
                              f"LOGSHIP_<SECTION>_<KEY> with a section of {', '.join(SECTIONS)} "
                              f"(e.g. LOGSHIP_SPOOL_DIR); other variables: {', '.join(OTHER_ENV)}")
        values[section][key] = _check(section, key, raw, f"environment {name}")
        source += f" + ${name}"
        origins[f"{section}.{key}"] = f"env {name}"
    return Config(**{s: SECTIONS[s](**v) for s, v in values.items()}, source=source, origins=origins)


def _read_yaml(path: Path) -> dict[str, dict[str, Any]]:
    import yaml  # imported here: the agent pays for it only when a file is given

    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found", "pass an existing file to --config") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}", "check the path and its permissions") \
            from None
    except yaml.YAMLError as exc:  # where and what only: its text quotes the line, which may hold a secret
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"config file {path} cannot be read: {getattr(exc, 'problem', None) or 'not YAML'}"
                          f"{where}", "fix the YAML syntax") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections", f"sections: {', '.join(SECTIONS)}")
    values: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for section, body in doc.items():
        if section not in SECTIONS:
            raise ConfigError(f"{path}: unknown section {section!r}", f"known sections: {', '.join(SECTIONS)}")
        if body is None:
            continue
        if not isinstance(body, dict):
            raise ConfigError(f"{path}: section {section} must be a mapping", f"e.g. {section}:\\n  key: value")
        for key, value in body.items():
            values[section][str(key)] = _check(section, str(key), value, str(path))
    return values


def to_dict(cfg: Config, *, redact: bool = True) -> dict[str, Any]:
    """The effective config as plain data (secrets redacted), for `logship config`."""
    out: dict[str, Any] = {}
    for section in SECTIONS:
        body = dataclasses.asdict(getattr(cfg, section))
        if redact:
            for s, key in SECRETS:
                if s == section and body.get(key):
                    body[key] = ["<redacted>"] * len(body[key]) if isinstance(body[key], list) else "<redacted>"
        out[section] = body
    return out
