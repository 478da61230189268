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
    ("watch:\n  checkpoint_seconds: 60\n", ["watch.checkpoint_seconds = 60", "5s"]),
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
