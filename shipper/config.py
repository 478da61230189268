"""Configuration: defaults, the YAML file, LOGSHIP_<SECTION>_<KEY> overrides, and validation.

Every key is declared once below with its default; config/logship.yaml documents the same keys.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

DEFAULT_CONFIG_FILE = "logship.yaml"
MIN_TOKEN = 16  # characters of a bearer token at least
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(b|k|kb|kib|m|mb|mib|g|gb|gib|t|tb|tib)?", re.I)
_SIZE_UNITS = {"": 1, "b": 1, "k": KiB, "kb": 1000, "kib": KiB, "m": MiB, "mb": 1000**2, "mib": MiB,
               "g": GiB, "gb": 1000**3, "gib": GiB, "t": 1 << 40, "tb": 1000**4, "tib": 1 << 40}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?", re.I)
_DURATION_UNITS = {"": 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_size(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, int):
        return value
    m = _SIZE_RE.fullmatch(str(value).strip())
    if not m:
        raise ValueError
    return int(float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").lower()])


def parse_duration(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, (int, float)):
        return float(value)
    m = _DURATION_RE.fullmatch(str(value).strip())
    if not m:
        raise ValueError
    return float(m.group(1)) * _DURATION_UNITS[(m.group(2) or "").lower()]


def _size(lo: int, hi: int) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        n = parse_size(v)
        if not lo <= n <= hi:
            raise ValueError
        return n

    check.__doc__ = f"a size like 16777216 or '16MiB', from {_human(lo)} to {_human(hi)}"
    return check


def _duration(lo: float, hi: float) -> Callable[[Any], float]:
    def check(v: Any) -> float:
        s = parse_duration(v)
        if not lo <= s <= hi:
            raise ValueError
        return s

    check.__doc__ = f"a duration in seconds like 30 or '30s', '5m', '2h', from {lo:g}s to {hi:g}s"
    return check


def _off_or(check: Callable[[Any], float]) -> Callable[[Any], float]:
    def off_or(v: Any) -> float:
        return 0.0 if parse_duration(v) == 0 else check(v)

    off_or.__doc__ = f"0 (off) or {check.__doc__}"
    return off_or


def _count(lo: int, hi: int) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        if isinstance(v, bool) or not re.fullmatch(r"\d+", str(v).strip()) or not lo <= int(v) <= hi:
            raise ValueError
        return int(v)

    check.__doc__ = f"a whole number from {lo} to {hi}"
    return check


def _choice(*allowed: str) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        if v not in allowed:
            raise ValueError
        return str(v)

    check.__doc__ = "one of " + ", ".join(allowed)
    return check


def _bool(v: Any) -> bool:
    """true or false"""
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return v.strip().lower() in ("true", "1", "yes")
    raise ValueError


def _text(v: Any) -> str:
    """a string"""
    if not isinstance(v, str):
        raise ValueError
    return v


def _store_url(v: Any) -> str:
    """s3://BUCKET[/PREFIX] or file:///ABSOLUTE/PATH (or file://RELATIVE/PATH)"""
    if not isinstance(v, str) or not re.fullmatch(r"s3://[a-z0-9][a-z0-9.-]{1,62}(/.*)?|file://.+", v):
        raise ValueError
    return v


def _listen(v: Any) -> str:
    """HOST:PORT, e.g. 127.0.0.1:8080"""
    if not isinstance(v, str) or not re.fullmatch(r"[\w.:\[\]-]+:\d{1,5}", v) or int(v.rsplit(":", 1)[1]) > 65535:
        raise ValueError
    return v


def _tokens(v: Any) -> list[str]:
    """a list of bearer tokens (at least 16 characters each); in the environment, comma-separated"""
    if isinstance(v, str):
        v = [t for t in v.split(",") if t.strip()]
    if not isinstance(v, list):
        raise ValueError(f"it is {_kind(v)}, not a list")
    for i, t in enumerate(v, 1):  # the message names the entry, never its text: it may be a valid token
        if not isinstance(t, str) or len(t.strip()) < MIN_TOKEN:
            raise ValueError(f"entry {i} of {len(v)} is {_kind(t)}")
    return [t.strip() for t in v]


def _token(v: Any) -> str:
    """a bearer token of at least 16 characters, or empty"""
    if v is None or v == "":
        return ""
    if not isinstance(v, str) or len(v.strip()) < MIN_TOKEN:
        raise ValueError(f"it is {_kind(v)}")
    return v.strip()


def _kind(v: Any) -> str:
    """What a secret's value is, without a character of it."""
    return f"{len(v)} characters long" if isinstance(v, str) else f"a {type(v).__name__}"


# A host name of api.proxy_allow: labels of letters, digits and '-', with '*' for any run of those within
# one label (node-*.example). The last label is literal and not a number: 10.1 or 0x7f000001 are
# addresses to a resolver, not names, and an address is allowed only by a CIDR.
_LABEL = r"(?!-)[a-z0-9*-]{1,63}(?<!-)"
_NAME_PATTERN_RE = re.compile(rf"(?:{_LABEL}\.)*(?!-)[a-z0-9-]{{1,63}}(?<!-)")


def proxy_allow_entry(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | str:
    """An entry of api.proxy_allow: a network (CIDR, or one address) or a host-name pattern (lower case)."""
    entry = entry.strip().lower().rstrip(".")
    try:
        return ipaddress.ip_network(entry, strict=False)
    except ValueError:
        pass
    last = entry.rpartition(".")[2]
    if (len(entry) > 253 or not _NAME_PATTERN_RE.fullmatch(entry) or re.fullmatch(r"[0-9]+|0x[0-9a-f]*", last)
            or "/" in entry):
        raise ValueError(f"{entry!r} is neither a CIDR nor a host name")
    return entry


def _proxy_allow(v: Any) -> list[str]:
    """a list of host names (node-1.example, or node-*.example: '*' within one label) and CIDRs
    (10.0.0.0/8, fd00::/8, 192.0.2.7); in the environment, comma-separated"""
    if v is None:
        return []
    if isinstance(v, str):
        v = [e for e in v.split(",") if e.strip()]
    if not isinstance(v, list) or not all(isinstance(e, str) for e in v):
        raise ValueError
    return [str(proxy_allow_entry(e)) for e in v]


def _api_url(v: Any) -> str:
    """an http(s)://HOST:PORT URL of the API beside this spool, or empty"""
    if v is None or v == "":
        return ""
    if not isinstance(v, str) or not re.fullmatch(r"https?://[\w.\[\]:-]+(:\d{1,5})?/?", v):
        raise ValueError
    return v.rstrip("/")


def _statuses(v: Any) -> list[str]:
    """a list of finished and lost (running logs are never deleted); in the environment, comma-separated"""
    if isinstance(v, str):
        v = [s.strip() for s in v.split(",") if s.strip()]
    if not isinstance(v, list) or not v or not all(s in ("finished", "lost") for s in v):
        raise ValueError
    return sorted(set(v))


def _label_map(v: Any) -> dict[str, str]:
    """a mapping of label to value, all of which a log must have; in the environment, k=v,k2=v2"""
    if isinstance(v, str):
        pairs = [p.partition("=") for p in v.split(",") if p.strip()]
        if not all(sep and k.strip() for k, sep, _ in pairs):
            raise ValueError
        v = {k.strip(): val.strip() for k, _, val in pairs}
    if v is None:
        return {}
    if not isinstance(v, dict) or not all(isinstance(k, str) and k and isinstance(x, str) for k, x in v.items()):
        raise ValueError
    return dict(v)


def _human(n: int) -> str:
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def _opt_text(v: Any) -> str:
    """a string (empty for none)"""
    if v is None:
        return ""
    return _text(v)


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


@dataclass(frozen=True)
class CompactConfig:
    every: float = 3600.0  # 0: `logship watch` does not compact
    small_bytes: int = 4 * MiB
    part_bytes: int = 32 * MiB


@dataclass(frozen=True)
class AgentConfig:
    sample_seconds: float = 5.0  # how often `logship run` samples its task's processes into liveness.json
    silence_timeout: float = 0.0  # 0: off; else --silence-timeout's default (shipper/liveness.py)
    on_silence: str = "warn"
    silence_grace: float = 10.0  # from TERM to KILL when on_silence is kill


@dataclass(frozen=True)
class Config:
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    watch: WatchConfig = field(default_factory=WatchConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    query: QueryConfig = field(default_factory=QueryConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    compact: CompactConfig = field(default_factory=CompactConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    source: str = "defaults"  # where it came from, for `logship config`

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
    "watch": {"checkpoint_seconds": _duration(0.1, 5), "api_url": _api_url},
    "api": {"listen": _listen, "tokens": _tokens, "query_tokens": _tokens, "proxy_allow": _proxy_allow,
            "proxy_token": _token},
    "query": {"timeout_seconds": _duration(0.1, 3600), "max_rows": _count(1, 10_000_000),
              "memory_bytes": _size(64 * MiB, 1 << 40), "threads": _count(1, 256),
              "copy": _bool, "grace_seconds": _duration(0, 86400)},
    "retention": {"older_than": _duration(0, 100 * 365 * 86400), "status": _statuses, "labels": _label_map,
                  "every": _duration(1, 7 * 86400)},
    "compact": {"every": _duration(0, 7 * 86400), "small_bytes": _size(1 * KiB, 1 * GiB),
                "part_bytes": _size(1 * MiB, 4 * GiB)},
    "agent": {"sample_seconds": _duration(0.1, 3600), "silence_timeout": _off_or(_duration(1, 30 * 86400)),
              "on_silence": _choice("warn", "kill"), "silence_grace": _duration(0, 3600)},
}
# Keys whose values are never printed: not by `logship config`, not in an error about them.
SECRETS = {("api", "tokens"), ("api", "query_tokens"), ("api", "proxy_token"), ("store", "access_key"),
           ("store", "secret_key")}
# LOGSHIP_ variables that are not config keys (LOGSHIP_<SECTION>_<KEY>); any other is a mistake.
OTHER_ENV = ("LOGSHIP_CONFIG", "LOGSHIP_TOKEN", "LOGSHIP_IBEX_TASK", "LOGSHIP_VENV", "LOGSHIP_UPDATE_SCREENSHOT",
             "LOGSHIP_TEST_CRASH_AFTER_DELETES", "LOGSHIP_RUN_ID")
SECTIONS = {"spool": SpoolConfig, "store": StoreConfig, "watch": WatchConfig, "api": ApiConfig,
            "query": QueryConfig, "retention": RetentionConfig, "compact": CompactConfig, "agent": AgentConfig}


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
    return Config(**{s: SECTIONS[s](**v) for s, v in values.items()}, source=source)


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
