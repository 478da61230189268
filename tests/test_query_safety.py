"""SQL is untrusted input, and so is the store: credentials, memory, SQL text, answers, manifests (issue 11)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from shipper.commands import s3local
from shipper.format import names
from shipper.query.engine import Database, archive_root
from shipper.query.rules import MAX_SQL_BYTES, Limits, QueryError
from shipper.store import open_store
from shipper.watcher import watch

from . import support
from .support import LOGSHIP, MakeConfig, agent_env, client_for, free_port, rows, run_agent

pytestmark = pytest.mark.asyncio(loop_scope="session")


def _strict(text: str) -> Any:
    def refuse(word: str) -> None:
        raise ValueError(f"{word} is not JSON")
    return json.loads(text, parse_constant=refuse)


# --- credentials ---------------------------------------------------------------------------------

# Ways a query could show what DuckDB holds: every setting, secrets, dynamic SQL, and errors that quote
# a request. Each must either answer without any credential in it, or be refused.
PROBES = [
    "SELECT current_setting('s3_secret_access_key') AS v",
    "SELECT current_setting('s3_access_key_id') AS v",
    "SELECT current_setting('s3_session_token') AS v",
    "SELECT * FROM duckdb_settings()",
    "SELECT * FROM duckdb_secrets()",
    "SELECT * FROM system.main.\"DUCKDB_SECRETS\"()",
    "SELECT * FROM which_secret('{root}x', 's3')",
    "SELECT * FROM query('SELECT * FROM duckdb_' || 'secrets()')",
    "SELECT * FROM json_execute_serialized_sql(json_serialize_sql('SELECT * FROM duckdb_secrets()'))",
    "SELECT * FROM duckdb_extensions()",
    "SELECT * FROM duckdb_variables()",
    "SELECT getenv('AWS_SECRET_ACCESS_KEY')",
    "SELECT * FROM read_text('{root}no/such/object')",
    "SELECT * FROM read_text('s3://another-bucket/x')",
    "SELECT * FROM read_parquet('{root}logs/cred/h1/manifest.json')",
]


async def test_no_credential_is_readable_through_sql(local_s3: s3local.LocalS3, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The store's credentials only in the environment (AWS_*), as an operator would give them: httpfs
    copies them into settings when it loads. Through the API and `logship query`, no probe shows any."""
    url = f"s3://{local_s3.bucket}/t-cred-{os.getpid()}-{time.monotonic_ns()}/"
    env = {"LOGSHIP_STORE_URL": url, "LOGSHIP_STORE_ENDPOINT": local_s3.endpoint}
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", local_s3.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", local_s3.secret_key)
    cfg = support.config(tmp_path, **env)
    assert not cfg.store.access_key and not cfg.store.secret_key
    secrets = [local_s3.access_key, local_s3.secret_key]
    assert run_agent(cfg.spool_dir, "cred", ["sh", "-c", "echo the line"], env=agent_env(cfg)).returncode == 0
    await watch(cfg, once=True)
    root = archive_root(cfg.store)

    client = await client_for(cfg)
    try:
        resp = await client.post("/api/v1/query", json={"sql": "SELECT line FROM lines"})
        assert resp.status == 200 and (await resp.json())["rows"] == [{"line": "the line"}]  # a real S3 query
        for probe in PROBES:
            sql = probe.format(root=root)
            resp = await client.post("/api/v1/query", json={"sql": sql})
            text = await resp.text()
            assert resp.status in (200, 400, 503), (sql, text)
            assert not [s for s in secrets if s in text], (sql, text)
            if "secret" in sql and "setting" not in sql:
                assert resp.status == 400 and (await resp.json())["error"] == "not_allowed", (sql, text)
        resp = await client.post("/api/v1/query", json={"sql": "SELECT name, value FROM duckdb_settings()"})
        settings = {r["name"]: r["value"] for r in (await resp.json())["rows"]}
        assert settings["s3_secret_access_key"] is None and settings["s3_access_key_id"] is None  # httpfs's own
    finally:
        await client.close()

    cli_env = {**agent_env(cfg), "AWS_ACCESS_KEY_ID": local_s3.access_key,
               "AWS_SECRET_ACCESS_KEY": local_s3.secret_key}
    res = subprocess.run([*LOGSHIP, "query", "--format", "csv", "SELECT line FROM lines"], env=cli_env,
                         capture_output=True, timeout=120)
    assert res.returncode == 0 and res.stdout == b"line\nthe line\n", res.stderr
    for probe in PROBES:
        res = subprocess.run([*LOGSHIP, "query", "--format", "csv", probe.format(root=root)], env=cli_env,
                             capture_output=True, timeout=120)
        out = res.stdout + res.stderr
        assert not [s for s in secrets if s.encode() in out], (probe, out)
        assert b"Traceback" not in out, (probe, out)


# --- memory: every format has the same bound -------------------------------------------------------


@contextmanager
def serve(env: dict[str, str]) -> Iterator[tuple[str, int]]:
    """`logship serve` in its own process (its memory is measured): its URL and pid."""
    port = free_port()
    proc = subprocess.Popen([*LOGSHIP, "serve"], env={**env, "LOGSHIP_API_LISTEN": f"127.0.0.1:{port}"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        assert proc.stderr is not None
        proc.stderr.close()


def _mib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(field)


async def test_every_format_has_the_same_memory_bound(tmp_path: Path) -> None:
    """The answer of issue 11 (250 KB rows: CSV grew the API by 5.6 GB while JSON refused it): every
    format now renders rows with to_json, whose memory counts against query.memory_bytes, so every format
    refuses it alike, and the API's peak memory stays far from the answer's 2.5 GB."""
    cfg = support.config(tmp_path, LOGSHIP_QUERY_MEMORY_BYTES=str(64 << 20))
    with serve(agent_env(cfg)) as (url, pid):
        async with aiohttp.ClientSession() as http:
            base = _mib(pid, "VmRSS")
            big = {"sql": "SELECT repeat('x', 250000) AS s FROM range(10000)"}
            for fmt in ("csv", "json", "ndjson"):
                async with http.post(f"{url}/api/v1/query?format={fmt}", json=big) as resp:
                    body = await resp.json()
                    assert resp.status == 400 and body["error"] == "query_too_large", (fmt, body)
            # DuckDB holds the query's own values of a few thousand rows in flight (≈ 0.5 GB here,
            # not counted by its memory_limit); nothing more, whatever the format.
            grew = _mib(pid, "VmHWM") - base
            assert grew < 1024, f"the API grew by {grew:.0f} MiB for a refused answer"
            async with http.post(f"{url}/api/v1/query?format=csv",
                                 json={"sql": "SELECT i, repeat('y', 1000) AS s FROM range(5000) t(i)"}) as resp:
                assert resp.status == 200 and len(await resp.read()) > 5000 * 1000


async def test_every_format_cuts_at_the_same_row(tmp_path: Path) -> None:
    cfg = support.config(tmp_path, LOGSHIP_QUERY_MAX_ROWS="1000")
    client = await client_for(cfg)
    try:
        sql = {"sql": "SELECT i FROM range(5000) t(i)"}
        resp = await client.post("/api/v1/query?format=csv", json=sql)
        assert (await resp.text()).splitlines()[1:] == [str(i) for i in range(1000)]
        resp = await client.post("/api/v1/query?format=ndjson", json=sql)
        assert [json.loads(x)["i"] for x in (await resp.text()).splitlines()] == list(range(1000))
        resp = await client.post("/api/v1/query?format=json", json=sql)
        body = await resp.json()
        assert [r["i"] for r in body["rows"]] == list(range(1000)) and body["truncated"]
    finally:
        await client.close()


# --- SQL text: size, NUL, parsing off the event loop ----------------------------------------------


async def test_long_sql_is_refused_at_once_and_parsing_never_holds_the_api(tmp_path: Path) -> None:
    cfg = support.config(tmp_path)
    client = await client_for(cfg)
    try:
        huge = "SELECT 1 WHERE 1" + " OR 1" * 160_000  # 800 KB: once 65-105 s of parsing, the API frozen
        resp = await client.post("/api/v1/query", json={"sql": huge})  # refused by its size, never parsed
        body = await resp.json()
        assert resp.status == 413 and body["error"] == "sql_too_large" and body["hint"], body
        assert str(MAX_SQL_BYTES) in body["detail"]

        # Just under the limit, the slowest shape DuckDB parses: other requests are answered meanwhile (a parse
        # that held the event loop or the GIL would let none through before the query's own answer).
        chain = "SELECT 1 AS one WHERE 1" + " OR 1" * ((MAX_SQL_BYTES - 30) // 5)
        assert len(chain) <= MAX_SQL_BYTES
        query = asyncio.ensure_future(client.post("/api/v1/query", json={"sql": chain}))
        meanwhile = 0
        while not query.done():
            resp = await client.get("/healthz")
            assert resp.status == 200
            meanwhile += not query.done()
            await asyncio.sleep(0.01)
        resp = await query
        assert resp.status == 200 and (await resp.json())["rows"] == [{"one": 1}]
        assert meanwhile >= 3, f"/healthz answered {meanwhile} times while a query was parsed"
    finally:
        await client.close()


async def test_parsing_counts_against_the_timeout(tmp_path: Path) -> None:
    db = Database(support.config(tmp_path), Limits(timeout_s=0.05))
    try:
        chain = "SELECT 1 WHERE 1" + " OR 1" * ((MAX_SQL_BYTES - 20) // 5)
        started = time.monotonic()
        with pytest.raises(QueryError) as err:
            rows(db, chain)
        assert err.value.code == "query_timeout", err.value
        assert time.monotonic() - started < 10
    finally:
        db.close()


async def test_a_nul_in_the_sql_is_refused(tmp_path: Path) -> None:
    cfg = support.config(tmp_path)
    client = await client_for(cfg)
    try:
        resp = await client.post("/api/v1/query", json={"sql": "SELECT 1 AS a\x00 WHERE false"})
        body = await resp.json()
        assert resp.status == 400 and "NUL" in body["detail"] and body["hint"], body
    finally:
        await client.close()
    db = Database(cfg)  # what `logship query` runs (its argv cannot hold a NUL, a file or stdin could)
    try:
        with pytest.raises(QueryError, match="NUL"):
            db.execute("SELECT 1\x00; SELECT 2")
    finally:
        db.close()


# --- answers: valid JSON whatever the values and the column names -------------------------------------


async def test_answers_are_valid_json_at_any_depth_and_for_any_column_names(tmp_path: Path) -> None:
    cfg = support.config(tmp_path)
    client = await client_for(cfg)
    floats = ("SELECT [[1.5, 'inf'::DOUBLE], NULL] AS l, {'x': 'nan'::FLOAT, 'y': ['-inf'::DOUBLE]} AS s, "
              "MAP {'k': 'inf'::DOUBLE} AS m, ['inf'::DOUBLE, 2]::DOUBLE[2] AS a, "
              "[{'z': 'inf'::DOUBLE}] AS ls, NULL::STRUCT(q DOUBLE) AS n, 0.25::DOUBLE AS f")
    want = {"l": [[1.5, "inf"], None], "s": {"x": "nan", "y": ["-inf"]}, "m": {"k": "inf"}, "a": ["inf", 2.0],
            "ls": [{"z": "inf"}], "n": None, "f": 0.25}
    try:
        for fmt in ("json", "ndjson"):
            resp = await client.post(f"/api/v1/query?format={fmt}", json={"sql": floats})
            text = await resp.text()
            assert resp.status == 200, text
            row = _strict(text.splitlines()[0]) if fmt == "ndjson" else _strict(text)["rows"][0]
            assert row == want
        # Any column name works, the query's own alias of old included; duplicate names are made unique.
        for sql, cols, row in (
                ("SELECT 1 AS logship_row_, 2 AS b", ["logship_row_", "b"], {"logship_row_": 1, "b": 2}),
                ("SELECT 1 AS a, 2 AS a", ["a", "a_1"], {"a": 1, "a_1": 2}),
                ('SELECT 1 AS "x""y", 2 AS "#1"', ['x"y', "#1"], {'x"y': 1, "#1": 2})):
            resp = await client.post("/api/v1/query", json={"sql": sql})
            body = await resp.json()
            assert resp.status == 200, body
            assert [c["name"] for c in body["columns"]] == cols and body["rows"] == [row]
            resp = await client.post("/api/v1/query?format=csv", json={"sql": sql})
            assert (await resp.text()).splitlines()[1] == ",".join(str(v) for v in row.values())
    finally:
        await client.close()


# --- store faults: one line with the store and a hint -------------------------------------------------


async def test_query_names_a_stopped_store_in_one_line(tmp_path: Path) -> None:
    """A store nobody answers on (connection refused), as `logship cat` reports it: one line, no traceback."""
    port = free_port()  # closed again: nothing listens there
    env = support.env_for(tmp_path / "spool", {"LOGSHIP_STORE_URL": "s3://logship/q/",
                                               "LOGSHIP_STORE_ENDPOINT": f"http://127.0.0.1:{port}",
                                               "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE1", "AWS_SECRET_ACCESS_KEY": "x" * 20})
    for cmd in (["query", "SELECT count(*) FROM lines"], ["query", "SELECT count(*) FROM logs"], ["grep", "x"]):
        res = subprocess.run([*LOGSHIP, *cmd], env=env, capture_output=True, timeout=120)
        err = res.stderr.decode()
        assert res.returncode != 0 and res.stdout == b"", (cmd, err)
        assert err.count("\n") == 1 and err.startswith("logship: ") and "Traceback" not in err, (cmd, err)
        assert "s3://logship/q/" in err and "(hint: " in err and "x" * 20 not in err, (cmd, err)


# --- the catalog: a bad object costs its own row, and is reported ----------------------------------------

INV = f"{(1 << 64) - 1 - 10**18:016x}"
BAD_OBJECTS = {  # under catalog/v1/head/, where the `logs` view reads: key -> (bytes, why)
    f"r-{INV}~t~h~1{'0' * 16}~!!notbase64": (b"", "base64url"),
    f"r-{INV}~t~h~1{'0' * 16}~W10": (b"", "not a row"),  # base64 of []
    f"r-{INV}~t~h~2{'0' * 16}~-": (b"{not json", "not JSON"),  # a long row's body: bad
    "r-nonsense": (b"x", "not a catalog row key"),
    "s-0000000000000000-deadbeef.parquet": (b"PAR1 not a summary PAR1", "unreadable"),  # the newest summary
    "zz": (b"", "not a catalog key"),
}


async def test_a_bad_catalog_object_costs_only_its_own_row_and_is_reported(
        make_config: MakeConfig, caplog: pytest.LogCaptureFixture) -> None:
    """`logs` reads the catalog, not the manifests: a bad manifest (never noted by a watcher) is not there at
    all, and a bad catalog object costs only its own row, is reported per query and counted."""
    cfg = make_config()
    for task in ("good1", "good2"):
        assert run_agent(cfg.spool_dir, task, ["sh", "-c", f"echo {task}"], env=agent_env(cfg)).returncode == 0
    await watch(cfg, once=True)
    store = open_store(cfg.store)
    try:
        await store.put(names.manifest_key("notjson", "h1"), b"not json")
        for name, (data, _) in BAD_OBJECTS.items():
            await store.put(names.CATALOG_HEAD + name, data)
    finally:
        await store.close()

    db = Database(cfg)
    try:
        with caplog.at_level(logging.WARNING, logger="logship.query"):
            result = db.execute("SELECT task, status FROM logs ORDER BY task")
            got = [json.loads(o) for batch in result.fetch_json() for o in batch]
        assert got == [{"task": "good1", "status": "finished"}, {"task": "good2", "status": "finished"}]
        skipped = dict(result.skipped)
        for name, (_, why) in BAD_OBJECTS.items():
            key = names.CATALOG_HEAD + name
            assert why in skipped[key], (key, skipped)
            assert any(key in r.getMessage() for r in caplog.records), key
        assert len(skipped) == len(BAD_OBJECTS) and db.bad_manifests == len(BAD_OBJECTS)
        assert rows(db, "SELECT count(*) AS n FROM lines") == [{"n": 2}]  # lines never read the catalog
    finally:
        db.close()

    client = await client_for(cfg)
    try:
        resp = await client.post("/api/v1/query", json={"sql": "SELECT count(*) AS n FROM logs"})
        assert resp.status == 200 and (await resp.json())["rows"] == [{"n": 2}]
        metrics = await (await client.get("/metrics")).text()
        assert f"logship_query_bad_manifests_total {len(BAD_OBJECTS)}" in metrics
    finally:
        await client.close()
    res = subprocess.run([*LOGSHIP, "query", "--format", "csv", "SELECT task FROM logs ORDER BY task"],
                         env=agent_env(cfg), capture_output=True, timeout=120)
    assert res.returncode == 0 and res.stdout == b"task\ngood1\ngood2\n", res.stderr
    assert all((names.CATALOG_HEAD + n).encode() in res.stderr for n in BAD_OBJECTS), res.stderr
