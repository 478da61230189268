"""What the CLI reports (issue 16, item 11): `gc --dry-run` says what it would delete, counting the query
copies; `logship config` says where each key's value comes from, never a secret, and stays valid YAML."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from shipper.config import CHECKS

from .support import LOGSHIP, env_for, run_agent, watch_once

SECRET = "s3cr3t-" + "k" * 20


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def test_gc_dry_run_says_would_delete_and_counts_the_query_copies(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    env = env_for(tmp_path / "spool", {"LOGSHIP_STORE_URL": f"file://{archive}"})
    for task in ("a", "b"):
        ran = run_agent(tmp_path / "spool", task, ["seq", "1", "5000"], env=env, args=["--label", f"team={task}"])
        assert ran.returncode == 0, ran.stderr
    assert watch_once(env).returncode == 0
    before = _files(archive)
    of_a = {k: n for k, n in before.items() if k.startswith("logs/a/h1/") or "/task=a/host=h1/" in k}
    copies = [k for k in of_a if k.startswith("lines/")]
    assert copies and len(of_a) > len(copies)  # the query copy is there, beside the segments and manifest

    res = subprocess.run([*LOGSHIP, "gc", "--older-than", "0s", "--label", "team=a", "--dry-run"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    first, last = res.stdout.splitlines()
    assert first.startswith("would delete a/h1: finished, ended ")
    assert first.endswith(f", {len(of_a)} objects, {sum(of_a.values())} bytes ({len(copies)} of them query copies)")
    assert last.startswith(f"would delete 1 logs: {len(of_a)} objects, {sum(of_a.values())} bytes with their "
                           "query copies")
    assert "deletes" not in res.stdout and "nothing deleted" in last
    assert _files(archive) == before

    res = subprocess.run([*LOGSHIP, "gc", "--older-than", "0s", "--label", "team=a"],
                         env={**env, "LOGSHIP_QUERY_GRACE_SECONDS": "0"},
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("deletes a/h1: finished, ended ")
    assert f"deleted 1 logs: {len(of_a) + 1} objects" in res.stdout  # and its marker, as the dry run said
    assert not [k for k in _files(archive) if k in of_a]


def test_config_says_where_each_value_comes_from(tmp_path: Path) -> None:
    f = tmp_path / "logship.yaml"
    f.write_text("store:\n  url: s3://logs/prod\n  endpoint: http://127.0.0.1:9\n"
                 f"api:\n  tokens: ['{SECRET}']\nlogging:\n  format: json\n")
    env = env_for(tmp_path / "spool", LOGSHIP_SPOOL_SEGMENT_BYTES="1MiB", LOGSHIP_API_QUERY_TOKENS=SECRET + "q",
                  AWS_ACCESS_KEY_ID=SECRET + "a", AWS_SECRET_ACCESS_KEY=SECRET + "s")
    res = subprocess.run([*LOGSHIP, "config"], env=env, capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert SECRET not in out
    by_key = {}
    section = ""
    for line in out.splitlines():
        if line.startswith("#") or line.startswith("  -"):
            continue
        if not line.startswith(" "):
            section = line.rstrip(":")
            continue
        key, _, comment = line.strip().partition(" # ")
        by_key[f"{section}.{key.split(':')[0]}"] = comment
    assert by_key.keys() == {f"{s}.{k}" for s, body in CHECKS.items() for k in body}  # every key, one comment
    assert by_key["spool.dir"] == "env LOGSHIP_SPOOL_DIR"
    assert by_key["spool.segment_bytes"] == "env LOGSHIP_SPOOL_SEGMENT_BYTES"
    assert by_key["spool.quota_bytes"] == "default"
    assert by_key["store.url"] == "file logship.yaml" and by_key["logging.format"] == "file logship.yaml"
    assert by_key["api.tokens"] == "file logship.yaml" and by_key["api.query_tokens"] == "env LOGSHIP_API_QUERY_TOKENS"
    # the S3 credentials: empty in the config, taken from AWS's own variables by the S3 client
    assert by_key["store.access_key"] == "default (empty): the S3 client takes env AWS_ACCESS_KEY_ID"
    assert by_key["store.secret_key"] == "default (empty): the S3 client takes env AWS_SECRET_ACCESS_KEY"
    doc = yaml.safe_load(out)  # still YAML, the same shape as a config file
    assert doc["spool"]["segment_bytes"] == 1 << 20 and doc["api"]["tokens"] == ["<redacted>"]
    assert doc["api"]["query_tokens"] == ["<redacted>"] and doc["logging"]["format"] == "json"

    # without AWS's variables, it says where the S3 client will look instead; a file store needs none
    env = {k: v for k, v in env.items() if not k.startswith("AWS_")}
    res = subprocess.run([*LOGSHIP, "config"], env={**env, "LOGSHIP_STORE_ACCESS_KEY": SECRET}, capture_output=True,
                         text=True, cwd=tmp_path, timeout=60)
    assert res.returncode == 0 and SECRET not in res.stdout, res.stderr
    assert "access_key: <redacted>" in res.stdout and "# env LOGSHIP_STORE_ACCESS_KEY\n" in res.stdout
    assert ("secret_key: ''                        # default (empty): AWS_SECRET_ACCESS_KEY is not set; the S3 "
            "client looks in ~/.aws/credentials or an instance role") in res.stdout
    res = subprocess.run([*LOGSHIP, "config"], env={**env, "LOGSHIP_STORE_URL": "file:///x"}, capture_output=True,
                         text=True, cwd=tmp_path, timeout=60)
    assert "access_key: ''                        # default\n" in res.stdout
