"""SQL over archived logs: the query copy's lines, the views, search, the sandbox, over both stores."""

from __future__ import annotations

import bisect
import dataclasses
import io
import json
import subprocess
import sys
import types
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from shipper.config import Config
from shipper.format import index, names
from shipper.format.manifest import Manifest
from shipper.query import copies
from shipper.query.engine import Database
from shipper.query.rules import QueryError
from shipper.store import open_store
from shipper.watcher import watch

from . import support
from .support import LOGSHIP, MakeConfig, agent_env, client_for, rows, run_agent

pytestmark = pytest.mark.asyncio(loop_scope="session")


# stdout and stderr interleaved: a stdout line cut by stderr lines (a partial chunk), a stdout line
# whose two halves fall in different segments, invalid UTF-8, and no newline at the very end.
INTERLEAVED = r'''
import sys, time
out, err = sys.stdout.buffer, sys.stderr.buffer
def w(f, b): f.write(b); f.flush()
for i in range(600):
    w(out, b"out %d needle\n" % i)
    if i % 7 == 0:
        w(err, b"err %d Needle\n" % i)
    # The pauses let the agent flush the unterminated half on its own (after 50 ms idle), with room
    # for a loaded machine: a half flushed late would be one chunk with its end and test nothing.
    if i % 150 == 0:
        w(out, b"half of out %d " % i); time.sleep(0.3)
        w(err, b"err between %d\n" % i); time.sleep(0.02)
        w(out, b"rest of out %d\n" % i)
    if i % 200 == 0:
        w(out, b"crossing " * 20); time.sleep(0.3)
        w(err, b"filler stderr line to fill the segment %d\n" % i * 1800); time.sleep(0.02)
        w(out, b"end of the crossing line\n")
    if i % 100 == 0:
        w(out, b"bad utf8 \xff\xfe\xc3\x28 %d\n" % i)
w(out, b"no final newline")
'''


SMALL_SEGMENTS = {"LOGSHIP_SPOOL_SEGMENT_BYTES": "64KiB"}


def config(tmp_path: Path, **env: str) -> Config:
    return support.config(tmp_path, **{**SMALL_SEGMENTS, **env})


@pytest.fixture
def make_config(make_config: MakeConfig) -> MakeConfig:
    """conftest's, with small segments: many segments out of little output."""
    return lambda **env: make_config(**{**SMALL_SEGMENTS, **env})


def spool_log(cfg: Config, task: str, host: str = "h1") -> tuple[bytes, list[index.Chunk], list[int]]:
    """The log's bytes, its chunks, and where each segment ends, from the spool."""
    d = cfg.spool_dir / task / host
    seqs = sorted(int(p.name[:8]) for p in d.glob("*.idx"))
    chunks = [c for s in seqs for c in index.read(str(names.spool_index(d, s)))]
    ends = [index.read(str(names.spool_index(d, s)))[-1].end for s in seqs]
    return b"".join(names.spool_segment(d, s).read_bytes() for s in seqs), chunks, ends


# --- the query copy ------------------------------------------------------------------------------


async def test_every_line_has_its_ts_stream_and_line_no(make_config: MakeConfig) -> None:
    cfg = make_config()
    res = run_agent(cfg.spool_dir, "mix", [sys.executable, "-c", INTERLEAVED], env=agent_env(cfg))
    assert res.returncode == 0
    await watch(cfg, once=True)
    log, chunks, seg_ends = spool_log(cfg, "mix")
    assert len(seg_ends) >= 4
    starts = [c.offset for c in chunks]
    db = Database(cfg)
    try:
        got = rows(db, "SELECT seq, line_no, epoch_us(ts) AS ts_us, stream, byte_offset, byte_end, partial, "
                       "truncated, line FROM lines WHERE task = 'mix' ORDER BY seq, line_no")
    finally:
        db.close()
    assert sum(not r["partial"] for r in got) == log.count(b"\n")
    assert len({r["seq"] for r in got}) == len(seg_ends)
    for r in got:
        first = chunks[bisect.bisect_right(starts, r["byte_offset"]) - 1]  # the chunk of its first byte
        assert (r["ts_us"], r["stream"]) == (first.ts_ns // 1000, first.stream_name), r
        last = chunks[bisect.bisect_right(starts, r["byte_end"] - 1) - 1]
        assert last.stream_name == r["stream"] and not r["truncated"]
        if not r["partial"]:  # line_no: the rank of its newline in the whole log, as `sed -n Np` counts
            assert log[r["byte_end"] - 1] == ord("\n") and r["line_no"] == log.count(b"\n", 0, r["byte_end"]), r
        else:  # cut by a segment's end (or the log's): numbered as if it ended there
            seg_end = seg_ends[r["seq"] - 1]
            assert r["byte_end"] == max(c.end for c in chunks if c.end <= seg_end and c.stream_name == r["stream"])
            assert r["line_no"] > log.count(b"\n", 0, seg_end)
    # Each stream's lines, joined, are exactly what the task wrote on it (invalid bytes replaced).
    for stream, wrote in (("stdout", res.stdout), ("stderr", res.stderr)):
        joined = "".join(r["line"] + ("" if r["partial"] else "\n") for r in got if r["stream"] == stream)
        assert joined == wrote.decode("utf-8", "replace")
    crossing = [r for r in got if r["line"].startswith("crossing")]
    assert crossing[0]["partial"] and got[got.index(crossing[0]) + 1]["seq"] == crossing[0]["seq"] + 1
    cut = [r for r in got if r["line"].startswith("half of out")]
    assert cut and all(log[r["byte_offset"]:r["byte_end"]].count(b"\n") > 1 for r in cut)  # stderr inside
    assert got[-1]["line"] == "no final newline" and got[-1]["partial"]


async def test_copies_follow_the_manifest_and_a_crash_between_them_is_repaired(make_config: MakeConfig) -> None:
    """The copy of a segment is built after the manifest names the segment, then marked in it. A watcher
    that died in between (and a spool whose segments are gone, dropped at the quota) rebuilds each missing
    copy from the store, under the same key: every line once."""
    cfg = make_config()
    res = run_agent(cfg.spool_dir, "late", [sys.executable, "-c", INTERLEAVED], env=agent_env(cfg))
    assert res.returncode == 0
    await watch(cfg, once=True)
    store = open_store(cfg.store)
    try:
        doc = Manifest.load(await store.get(names.manifest_key("late", "h1")))
        assert len(doc.segments) >= 4 and all(s.query_copy for s in doc.segments)
        copies = sorted(o.key for o in await store.list("lines/") if "/task=late/" in o.key)
        assert len(copies) == len(doc.segments)
        expected = _line_table(cfg, "late")
        # The crash: the copies and their marks gone, the spool's segments too, the log not yet shipped.
        before = {k: await store.get(k) for k in copies}
        await store.delete(copies)
        doc = doc.replace(segments=tuple(dataclasses.replace(s, query_copy=None) for s in doc.segments))
        await store.put(names.manifest_key("late", "h1"), doc.dump())
        d = cfg.spool_dir / "late" / "h1"
        for p in [*d.glob("*.log"), *d.glob("*.idx"), d / names.SHIPPED_FILE]:
            p.unlink()
        assert _line_table(cfg, "late") == []
        w = await watch(cfg, once=True)
        assert w.stats["query_copies"] == len(copies)
        assert _line_table(cfg, "late") == expected
        assert {k: await store.get(k) for k in copies} == before  # the same objects, rebuilt
        doc = Manifest.load(await store.get(names.manifest_key("late", "h1")))
        assert all(s.query_copy for s in doc.segments) and (d / names.SHIPPED_FILE).exists()
    finally:
        await store.close()


async def test_without_the_copy_segments_ship_and_no_lines_are_written(make_config: MakeConfig) -> None:
    cfg = make_config(LOGSHIP_QUERY_COPY="false")
    assert run_agent(cfg.spool_dir, "nocopy", [sys.executable, "-c", INTERLEAVED], env=agent_env(cfg)).returncode == 0
    w = await watch(cfg, once=True)
    assert w.stats["segments_uploaded"] >= 4 and w.stats["query_copies"] == 0
    assert (cfg.spool_dir / "nocopy" / "h1" / names.SHIPPED_FILE).exists()
    store = open_store(cfg.store)
    try:
        assert not [o for o in await store.list("lines/") if "/task=nocopy/" in o.key]
    finally:
        await store.close()


def _line_table(cfg: Config, task: str) -> list[tuple[Any, ...]]:
    db = Database(cfg)
    try:
        got = rows(db, f"SELECT seq, line_no, stream, byte_offset, line FROM lines WHERE task = '{task}' "
                       "ORDER BY seq, line_no, byte_offset")
    finally:
        db.close()
    return [tuple(r.values()) for r in got]


async def test_very_long_lines_are_cut_and_flagged(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    script = "import sys; sys.stdout.write('x' * 300000 + '\\n' + 'é' * 70000 + '\\nshort\\n')"
    run_agent(cfg.spool_dir, "long", [sys.executable, "-c", script], env=agent_env(cfg))
    log, chunks, _ = spool_log(cfg, "long")
    copy = copies.build(log, chunks, "long", "h1", 1, 1)
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    t = pq.read_table(io.BytesIO(copy.data)).to_pylist()
    assert [(r["line_no"], r["truncated"], len(r["line"]), r["byte_end"] - r["byte_offset"]) for r in t] == [
        (1, True, copies.LINE_MAX, 300001), (2, True, copies.LINE_MAX, 140001), (3, False, 5, 6)]
    assert t[1]["line"] == "é" * copies.LINE_MAX
    # the same segment gives the same object, byte for byte: re-uploads write the same content
    assert copies.build(log, chunks, "long", "h1", 1, 1).data == copy.data


async def test_line_numbers_count_every_earlier_segment(tmp_path: Path) -> None:
    """Uploaded segments count from the manifest, others from the spool's index, dropped ones from dropped.json."""
    d = tmp_path / "t" / "h"
    d.mkdir(parents=True)
    names.spool_index(d, 2).write_bytes(index.pack(1, 0, 0, 10, 5, index.STDOUT, 0))
    (d / "dropped.json").write_text(json.dumps([{"seq": 3, "raw_size": 10, "lines": 7}]))
    assert copies.first_line_no(d, 5, {1: 3, 4: 11}) == 3 + 5 + 7 + 11 + 1
    assert copies.first_line_no(d, 1, {}) == 1


# --- search and views ----------------------------------------------------------------------------

HOSTS = ("h1", "h2", "h3")
# Lines some of which hold one of four spellings; enough of them to fill several 64 KiB segments.
HAYSTACK = """
import sys
task, host = sys.argv[1], sys.argv[2]
spellings = ["needle", "NEEDLE", "NeEdLe", "a.b*(c)?"]
for i in range(9000):
    word = spellings[i % 4] if i % 53 == 0 else ("ne edle" if i % 41 == 0 else "hay")
    sys.stdout.write(f"{task} {host} line {i} {word} {'x' * (i % 13)}\\n")
"""


def haystack(task: str, host: str) -> list[str]:
    """The lines HAYSTACK writes, computed here by the same code."""
    out = io.StringIO()
    exec(HAYSTACK.replace("import sys\n", ""), {"sys": types.SimpleNamespace(argv=["-c", task, host], stdout=out)})
    return out.getvalue().splitlines()


@pytest.fixture
async def many(make_config: MakeConfig) -> AsyncIterator[tuple[Config, dict[tuple[str, str], list[str]]]]:
    cfg = make_config()
    written = {}
    for task in ("t1", "t2"):
        for host in HOSTS:
            assert run_agent(cfg.spool_dir, task, [sys.executable, "-c", HAYSTACK, task, host], host=host,
                             env=agent_env(cfg)).returncode == 0
            written[(task, host)] = haystack(task, host)
    w = await watch(cfg, once=True)
    assert w.stats["segments_uploaded"] >= 18
    yield cfg, written


async def test_a_query_finds_exactly_the_lines_with_a_string(many: tuple[Config, dict[tuple[str, str], list[str]]]
                                                             ) -> None:
    cfg, written = many
    db = Database(cfg)
    try:
        got = rows(db, "SELECT task, host, line_no, line FROM lines WHERE contains(line, 'needle')")
        logs = rows(db, "SELECT task, host, status, exit_code, lines, segments FROM logs ORDER BY task, host")
    finally:
        db.close()
    want = {(t, h, i + 1, line)
            for (t, h), lines in written.items() for i, line in enumerate(lines) if "needle" in line}
    assert {(r["task"], r["host"], r["line_no"], r["line"]) for r in got} == want and len(got) == len(want)
    assert len({(r["task"], r["host"]) for r in got}) == 6
    # the on-call query of DESIGN §1, as written there
    recent = rows(db2 := Database(cfg), "SELECT host, ts, line FROM lines WHERE line ILIKE '%needle%' "
                                        "AND ts > now() - INTERVAL 7 DAY")
    db2.close()
    assert len(recent) == sum(1 for lines in written.values() for line in lines if "needle" in line.lower())
    assert [(r["task"], r["host"], r["status"], r["exit_code"], r["lines"]) for r in logs] == [
        (t, h, "finished", 0, 9000) for t in ("t1", "t2") for h in HOSTS]
    assert all(r["segments"] >= 3 for r in logs)


@pytest.mark.parametrize("pattern", ["nEEdle", "A.B*(C)?"])
async def test_grep_and_search_find_the_pattern_in_any_case(
        many: tuple[Config, dict[tuple[str, str], list[str]]], pattern: str) -> None:
    cfg, written = many
    want = {(t, h, i + 1, line) for (t, h), lines in written.items() for i, line in enumerate(lines)
            if pattern.lower() in line.lower()}
    assert want
    client = await client_for(cfg)
    try:
        resp = await client.get("/api/v1/search", params={"q": pattern, "i": "1", "limit": "1000"})
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        assert not body["more"]
        assert {(h["task"], h["host"], h["line_no"], h["line"]) for h in body["hits"]} == want
        hit = body["hits"][0]
        log = await client.get(hit["url"], headers={"Range": hit["range"]})
        assert log.status == 206 and (await log.read()) == hit["line"].encode() + b"\n"
        one = await client.get("/api/v1/search", params={"q": pattern, "i": "1", "task": "t2", "host": "h3"})
        assert {h["task"] + h["host"] for h in (await one.json())["hits"]} == {"t2h3"}
        exact = await client.get("/api/v1/search", params={"q": pattern, "limit": "1000"})
        assert {h["line"] for h in (await exact.json())["hits"]} == {line for *_, line in want if pattern in line}
    finally:
        await client.close()
    res = subprocess.run([*LOGSHIP, "grep", "-i", pattern, "--since", "1h", "--limit", "5000"],
                         env=agent_env(cfg), capture_output=True, timeout=120)
    assert res.returncode == 0, res.stderr
    printed = res.stdout.decode().splitlines()
    assert sorted(printed) == sorted(f"{t}/{h}:{n}: {line}" for t, h, n, line in want)


async def test_a_filter_on_task_or_date_reads_only_that_partition(make_config: MakeConfig) -> None:
    cfg = make_config()
    for task in ("a1", "a2"):
        run_agent(cfg.spool_dir, task, ["sh", "-c", "seq 1 30000"], env=agent_env(cfg))
    await watch(cfg, once=True)
    store = open_store(cfg.store)
    try:  # objects that fail any query that opens them, in partitions of their own
        await store.put(names.lines_key("2031-01-01", "a1", "h1", 1), b"not parquet at all")
        await store.put(names.lines_key("2030-01-01", "zz", "h1", 1), b"not parquet at all")
    finally:
        await store.close()
    db = Database(cfg)
    try:
        assert rows(db, "SELECT count(*) AS n FROM lines WHERE task = 'a2'") == [{"n": 30000}]
        assert rows(db, "SELECT count(*) AS n FROM lines WHERE date < DATE '2030-01-01'") == [{"n": 60000}]
        assert rows(db, "SELECT count(*) AS n FROM lines WHERE task = 'a1' AND date < '2030-01-01'") == [{"n": 30000}]
        with pytest.raises(QueryError):
            rows(db, "SELECT count(*) AS n FROM lines WHERE task = 'a1'")  # reads the bad object of a1
        with pytest.raises(QueryError):
            rows(db, "SELECT count(*) FROM lines")
    finally:
        db.close()


async def test_an_empty_archive_has_empty_views_until_it_fills(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    client = await client_for(cfg)
    try:
        for sql in ("SELECT * FROM lines", "SELECT * FROM logs"):
            resp = await client.post("/api/v1/query", json={"sql": sql})
            assert resp.status == 200 and (await resp.json())["rows"] == []
        run_agent(cfg.spool_dir, "late", ["sh", "-c", "echo hello"], env=agent_env(cfg))
        await watch(cfg, once=True)
        resp = await client.post("/api/v1/query", json={"sql": "SELECT line FROM lines"})
        assert (await resp.json())["rows"] == [{"line": "hello"}]
    finally:
        await client.close()


# --- the endpoint: formats, limits, refusals ----------------------------------------------------


async def test_query_formats_and_limits(tmp_path: Path) -> None:
    # A generous timeout for the queries that must answer (on a loaded machine, even these can take seconds);
    # a 1 s one, below, for the query that must time out.
    cfg = config(tmp_path, LOGSHIP_QUERY_MAX_ROWS="100", LOGSHIP_QUERY_TIMEOUT_SECONDS="120")
    run_agent(cfg.spool_dir, "f", ["sh", "-c", "seq 1 5000"], env=agent_env(cfg))
    await watch(cfg, once=True)
    client = await client_for(cfg)
    sql = {"sql": "SELECT line_no, line FROM lines ORDER BY line_no"}
    try:
        resp = await client.post("/api/v1/query", json=sql)
        body = await resp.json()
        assert resp.headers["X-Row-Limit"] == "100" and body["truncated"] and body["row_count"] == 100
        assert body["rows"][:2] == [{"line_no": 1, "line": "1"}, {"line_no": 2, "line": "2"}]
        assert body["columns"] == [{"name": "line_no", "type": "BIGINT"}, {"name": "line", "type": "VARCHAR"}]
        resp = await client.post("/api/v1/query?format=csv", json=sql)
        assert resp.content_type == "text/csv", await resp.text()
        assert (await resp.text()).splitlines()[:3] == ["line_no,line", "1,1", "2,2"]
        resp = await client.post("/api/v1/query?format=ndjson", json={"sql": "SELECT 'a\"b' AS s, [1, 2] AS l"})
        assert [json.loads(x) for x in (await resp.text()).splitlines()] == [{"s": 'a"b', "l": [1, 2]}]
        # Infinity and NaN are not JSON: they come as strings, and a strict parser takes the answer.
        floats = {"sql": "SELECT 'inf'::DOUBLE AS i, '-inf'::FLOAT AS m, 'nan'::DOUBLE AS n, 0.5 AS h, "
                         "[1.5, 'inf'::DOUBLE] AS l"}
        for fmt in ("json", "ndjson"):
            resp = await client.post(f"/api/v1/query?format={fmt}", json=floats)
            text = await resp.text()
            row = json.loads(text.splitlines()[0] if fmt == "ndjson" else text, parse_constant=_not_json)
            row = row if fmt == "ndjson" else row["rows"][0]
            assert row == {"i": "inf", "m": "-inf", "n": "nan", "h": 0.5, "l": [1.5, "inf"]}
    finally:
        await client.close()
    client = await client_for(config(tmp_path, LOGSHIP_QUERY_TIMEOUT_SECONDS="1"))
    try:
        resp = await client.post("/api/v1/query", json={"sql": "SELECT count(*) FROM range(100000000000)"})
        assert resp.status == 400 and (await resp.json())["error"] == "query_timeout"
    finally:
        await client.close()


def _not_json(word: str) -> None:
    raise ValueError(f"{word} is not JSON")


REFUSED = [
    ("SELECT * FROM read_csv('/etc/passwd')", "/etc/passwd"),
    ("SELECT * FROM read_text('/etc/passwd')", "/etc/passwd"),
    ("SELECT * FROM read_blob('/etc/passwd')", "/etc/passwd"),
    ("SELECT * FROM read_json('/etc/passwd')", "/etc/passwd"),
    ("SELECT * FROM read_parquet('/etc/passwd')", "/etc/passwd"),
    ("SELECT * FROM parquet_metadata('/etc/passwd')", "/etc/passwd"),
    ("SELECT * FROM sniff_csv('/etc/passwd')", "/etc/passwd"),
    ("SELECT * FROM glob('/etc/*')", "/etc/"),
    ("SELECT * FROM query('SELECT * FROM read_text(''/etc/passwd'')')", "query() is not allowed"),
    ("SELECT * FROM read_text('{other}')", "{other}"),
    ("SELECT * FROM read_text('http://127.0.0.1:{port}/')", "http://127.0.0.1"),
    ("COPY (SELECT 1) TO '{root}lines/x.csv'", "COPY statements are not allowed"),
    ("ATTACH '{root}x.db'", "ATTACH statements are not allowed"),
    ("INSTALL httpfs", "INSTALL and LOAD statements are not allowed"),
    ("LOAD httpfs", "INSTALL and LOAD statements are not allowed"),
    ("SET enable_external_access = true", "SET statements are not allowed"),
    ("CREATE TABLE t AS SELECT 1", "CREATE statements are not allowed"),
    ("SELECT 1; SELECT 2", "2 statements given"),
    ("PRAGMA threads = 1", "SET statements are not allowed"),
    ("EXPORT DATABASE '{root}dump'", "EXPORT statements are not allowed"),
]


async def test_the_endpoint_refuses_what_is_not_allowed(make_config: MakeConfig, tmp_path: Path) -> None:
    cfg = make_config()
    run_agent(cfg.spool_dir, "s", ["sh", "-c", "echo secret-free"], env=agent_env(cfg))
    await watch(cfg, once=True)
    from shipper.query.engine import archive_root

    root = archive_root(cfg.store)
    store = open_store(cfg.store)
    before = sorted(o.key for o in await store.list(""))
    await store.close()
    if root.startswith("s3://"):  # the same bucket, beside the archive's prefix
        other = root.rstrip("/") + "-other/x.txt"
        st = open_store(dataclasses.replace(cfg.store, url=other.rsplit("/", 1)[0]))
        await st.put("x.txt", b"other prefix")
        await st.close()
    else:
        other = str(tmp_path / "elsewhere.txt")
        Path(other).write_text("another directory")
    port = cfg.store.endpoint.rsplit(":", 1)[1] if cfg.store.endpoint else "9"
    client = await client_for(cfg)
    try:
        for sql, words in REFUSED:
            sql, words = (s.format(root=root, other=other, port=port) for s in (sql, words))
            resp = await client.post("/api/v1/query", json={"sql": sql})
            body = await resp.json()
            assert resp.status == 400 and body["error"] == "not_allowed", (sql, body)
            assert words in body["detail"] and body["hint"], (sql, body)
        for bad, words in ((b"{not json", "not JSON"), (b'{"query": "SELECT 1"}', '"sql"'), (b"", "no body"),
                           (b'{"sql": "SELECT 1", "x": 1}', "unknown key")):
            resp = await client.post("/api/v1/query", data=bad, headers={"Content-Type": "application/json"})
            body = await resp.json()
            assert resp.status == 400 and words in body["detail"], (bad, body)
    finally:
        await client.close()
    store = open_store(cfg.store)
    assert sorted(o.key for o in await store.list("")) == before  # nothing was written
    await store.close()


async def test_sql_needs_a_token_of_the_query_scope(tmp_path: Path) -> None:
    read, query = "r" * 16, "q" * 16
    cfg = config(tmp_path, LOGSHIP_API_TOKENS=read, LOGSHIP_API_QUERY_TOKENS=query)
    client = await client_for(cfg)
    try:
        sql = {"sql": "SELECT count(*) AS n FROM lines"}
        r = await client.post("/api/v1/query", json=sql)
        assert r.status == 401
        r = await client.post("/api/v1/query", json=sql, headers={"Authorization": f"Bearer {read}"})
        body = await r.json()
        assert r.status == 403 and body["error"] == "forbidden" and "api.query_tokens" in body["hint"]
        r = await client.post("/api/v1/query", json=sql, headers={"Authorization": f"Bearer {query}"})
        assert r.status == 200, await r.text()
        for token in (read, query):  # both scopes read and search
            r = await client.get("/api/v1/search", params={"q": "x"}, headers={"Authorization": f"Bearer {token}"})
            assert r.status == 200, await r.text()
            r = await client.get("/api/v1/tasks", headers={"Authorization": f"Bearer {token}"})
            assert r.status == 200
    finally:
        await client.close()
