"""Config: the documented file matches the defaults; bad input names key, value and what is allowed."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from shipper.config import Config, load_config
from shipper.errors import ConfigError

from .support import LOGSHIP, ROOT, env_for

DOC = ROOT / "config" / "logship.yaml"


def test_documented_file_holds_every_key_with_its_default() -> None:
    import yaml

    doc = yaml.safe_load(DOC.read_text())
    cfg = load_config(DOC, env={})
    assert cfg.spool == Config().spool and cfg.store == Config().store
    assert cfg.watch == Config().watch and cfg.api == Config().api
    from shipper.config import CHECKS

    assert {s: set(body) for s, body in doc.items()} == {s: set(keys) for s, keys in CHECKS.items()}


def test_environment_overrides_file(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("spool:\n  segment_bytes: 1MiB\nstore:\n  compression: none\n")
    cfg = load_config(f, env={"LOGSHIP_SPOOL_SEGMENT_BYTES": "2MiB", "LOGSHIP_API_TOKENS": "a" * 16 + "," + "b" * 16})
    assert cfg.spool.segment_bytes == 2 << 20 and cfg.store.compression == "none"
    assert cfg.api.tokens == ["a" * 16, "b" * 16]


@pytest.mark.parametrize("yaml_text,words", [
    ("spool:\n  segmnt_bytes: 1\n", ["unknown key spool.segmnt_bytes", "segment_bytes"]),
    ("spol:\n  dir: x\n", ["unknown section 'spol'", "spool"]),
    ("spool:\n  segment_bytes: 12q\n", ["spool.segment_bytes = '12q'", "16MiB"]),
    ("spool:\n  segment_bytes: 10\n", ["spool.segment_bytes = 10", "64KiB"]),
    ("store:\n  compression: lz4\n", ["store.compression = 'lz4'", "zstd, none"]),
    ("store:\n  url: http://x\n", ["store.url = 'http://x'", "s3://"]),
    ("watch:\n  checkpoint_seconds: 2m\n", ["watch.checkpoint_seconds = '2m'", "60s"]),
    ("api:\n  listen: nowhere\n", ["api.listen = 'nowhere'", "HOST:PORT"]),
    ("api:\n  tokens: [short]\n", ["api.tokens", "16 characters"]),
    ("spool: [1, 2]\n", ["section spool must be a mapping"]),
    ("spool:\n  dir: [unclosed\n", ["cannot be read"]),
])
def test_bad_values_are_named(tmp_path: Path, yaml_text: str, words: list[str]) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(yaml_text)
    with pytest.raises(ConfigError) as info:
        load_config(f, env={})
    for w in words:
        assert w in str(info.value)


def test_bad_environment_value() -> None:
    with pytest.raises(ConfigError, match="LOGSHIP_API_TOKENS.*16 characters"):
        load_config(env={"LOGSHIP_API_TOKENS": "short"})


def test_cli_reports_config_errors_and_exits_nonzero(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("store:\n  compression: lz4\n")
    for cmd in (["config"], ["watch", "--once"], ["run", "--task", "t", "--", "echo", "x"]):
        res = subprocess.run([*LOGSHIP, "--config", str(f), *cmd], env=env_for(tmp_path / "spool"),
                             capture_output=True, cwd=tmp_path)
        assert res.returncode != 0 and b"store.compression = 'lz4'" in res.stderr, cmd
        assert b"Traceback" not in res.stderr
    assert not (tmp_path / "spool").exists()
    res = subprocess.run([*LOGSHIP, "config", "--config", str(tmp_path / "missing.yaml")], capture_output=True)
    assert res.returncode == 2 and b"not found" in res.stderr


def test_cli_prints_effective_config_with_secrets_redacted(tmp_path: Path) -> None:
    env = env_for(tmp_path, LOGSHIP_STORE_SECRET_KEY="hunter2hunter2", LOGSHIP_SPOOL_SEGMENT_BYTES="1MiB")
    res = subprocess.run([*LOGSHIP, "config"], env=env, capture_output=True, cwd=tmp_path, check=True)
    assert b"segment_bytes: 1048576" in res.stdout and b"hunter2" not in res.stdout
    assert b"<redacted>" in res.stdout


def test_an_unknown_logship_variable_is_an_error_that_lists_what_is_valid() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={"LOGSHIP_SPOL_DIR": "/tmp/x"})
    text = str(info.value)
    assert "LOGSHIP_SPOL_DIR" in text and "unknown section 'spol'" in text and "spool, store" in text
    assert "LOGSHIP_CONFIG" in text  # and the variables that are not config keys
    with pytest.raises(ConfigError, match="LOGSHIP_SPOOL_DIRR: unknown key spool.dirr.*segment_bytes"):
        load_config(env={"LOGSHIP_SPOOL_DIRR": "/tmp/x"})
    # the variables the project uses that are not config keys stay allowed
    from shipper.config import OTHER_ENV

    assert load_config(env={name: "x" for name in OTHER_ENV}) == Config(source="defaults")


def test_the_repository_uses_no_other_logship_variable() -> None:
    """Every LOGSHIP_ name in the code, docs and infra is a config key or on the allow list."""
    import re

    from shipper.config import CHECKS, OTHER_ENV

    keys = {f"LOGSHIP_{s}_{k}".upper() for s, body in CHECKS.items() for k in body}
    found: set[str] = set()
    for pattern in ("shipper/**/*.py", "api/**/*.py", "tests/*.py", "bench/*.py", "infra/**/*", "docs/*.md",
                    "README.md", "config/*"):
        for path in ROOT.glob(pattern):
            if path.is_file() and path.name != Path(__file__).name:  # this file misspells some on purpose
                found |= set(re.findall(r"LOGSHIP_[A-Z0-9_]*[A-Z0-9]", path.read_text(errors="replace")))
    prefixes = {n for n in found if any(k.startswith(n + "_") for k in keys | set(OTHER_ENV))}  # LOGSHIP_QUERY_*
    assert found - keys - set(OTHER_ENV) - prefixes == set()


SECRET = "s3cr3t-valid-token-" + "x" * 8


@pytest.mark.parametrize("yaml_text,env", [
    (f"api:\n  tokens: ['{SECRET}', short]\n", {}),
    (f"api:\n  query_tokens: ['{SECRET}', 12]\n", {}),
    ("api:\n  proxy_token: short\n", {}),
    (f"api:\n  tokens: ['{SECRET}', [unclosed\n", {}),  # a YAML error quotes its line
    ("", {"LOGSHIP_API_TOKENS": f"{SECRET},short"}),
    ("", {"LOGSHIP_API_PROXY_TOKEN": "short"}),
    ("", {"LOGSHIP_STORE_SECRET_KEY": "", "LOGSHIP_API_QUERY_TOKENS": f"{SECRET},{SECRET[:10]}"}),
])
def test_errors_never_print_a_token(tmp_path: Path, yaml_text: str, env: dict[str, str]) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(yaml_text)
    with pytest.raises(ConfigError) as info:
        load_config(f, env=env)
    text = f"{info.value} {info.value.detail} {info.value.hint}"
    assert SECRET not in text and SECRET[:10] not in text and "short" not in text, text
    if "[unclosed" not in yaml_text:
        assert "not shown" in text and ("entry 2 of 2" in text or "characters long" in text), text


def test_cli_redacts_every_secret_in_config_and_errors(tmp_path: Path) -> None:
    env = env_for(tmp_path, LOGSHIP_STORE_SECRET_KEY=SECRET, LOGSHIP_STORE_ACCESS_KEY=SECRET + "a",
                  LOGSHIP_API_TOKENS=SECRET + "b", LOGSHIP_API_QUERY_TOKENS=SECRET + "c",
                  LOGSHIP_API_PROXY_TOKEN=SECRET + "d", LOGSHIP_API_PROXY_ALLOW="10.0.0.0/8,node-*.example")
    res = subprocess.run([*LOGSHIP, "config"], env=env, capture_output=True, cwd=tmp_path, check=True)
    assert SECRET.encode() not in res.stdout and res.stdout.count(b"<redacted>") == 5
    assert b"- 10.0.0.0/8" in res.stdout and b"- node-*.example" in res.stdout
    res = subprocess.run([*LOGSHIP, "config"], env={**env, "LOGSHIP_API_TOKENS": f"{SECRET},short"},
                         capture_output=True, cwd=tmp_path)
    assert res.returncode != 0 and b"api.tokens" in res.stderr and SECRET.encode() not in res.stderr


@pytest.mark.parametrize("value,ok", [
    ("10.0.0.0/8", ["10.0.0.0/8"]), ("Node-*.Example.,fd00::/8", ["node-*.example", "fd00::/8"]),
    ("192.0.2.7", ["192.0.2.7/32"]), ("localhost", ["localhost"]), ("", []),
    ("*", None), ("10.1", None), ("0x7f000001", None), ("a/b", None), ("node.*", None), ("http://x", None),
])
def test_proxy_allow_takes_host_names_and_cidrs(value: str, ok: list[str] | None) -> None:
    if ok is None:
        with pytest.raises(ConfigError, match="api.proxy_allow.*neither a CIDR nor a host name"):
            load_config(env={"LOGSHIP_API_PROXY_ALLOW": value})
    else:
        assert load_config(env={"LOGSHIP_API_PROXY_ALLOW": value}).api.proxy_allow == ok


@pytest.mark.parametrize(("given", "seconds"), [("0.5", 0.5), ("5", 5.0), ("30s", 30.0), ("1m", 60.0)])
def test_the_checkpoint_interval_is_the_operators_choice_up_to_a_minute(given: str, seconds: float) -> None:
    # docs/operations.md prices 1, 5 and 30 s: a slow log's requests and CPU against what a dead host loses
    assert load_config(env={"LOGSHIP_WATCH_CHECKPOINT_SECONDS": given}).watch.checkpoint_seconds == seconds
