"""`GET /api/v1/openapi.json`: the API described as an OpenAPI 3.1 document, built here as plain data."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from . import ibex, liveness
from .params import CURSOR_PATTERN, OFFSET_MAX

routes = web.RouteTableDef()
PATH = "/api/v1/openapi.json"

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(type_: str, **extra: Any) -> Schema:
    return {"type": [type_, "null"], **extra}


_ID = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"}
# A query filter by id: empty is the same as leaving it out (as HTML forms send it)
_ID_FILTER = {"type": "string", "pattern": "^([A-Za-z0-9][A-Za-z0-9._-]{0,127})?$"}
# a yes/no query parameter, as api/params.py flag() reads it (the web page sends 1 and 0)
_FLAG = {"type": "string", "pattern": "^([tT][rR][uU][eE]|[fF][aA][lL][sS][eE]|[yY][eE][sS]|[nN][oO]|1|0)$",
         "default": "false"}
_OFFSET = {"type": "integer", "minimum": 0, "maximum": OFFSET_MAX}
# since= / until= (api/params.py parse_time): every form is bounded, so no value overflows
_TIME = {"anyOf": [
    {"type": "string", "pattern": "^[0-9]{1,12}([.][0-9]{1,9})?([mM][sS]|[sSmMhHdDwW])?$",
     "description": "a duration back from now: 90s, 30m, 12h, 7d, 2w, 1.5h (a bare number is seconds)"},
    {"type": "string", "pattern": "^[0-9]{13,19}$", "description": "Unix nanoseconds (past 2^63-1: the end of time)"},
    {"type": "string", "format": "date", "description": "a date: its midnight, UTC"},
    {"type": "string", "format": "date-time", "description": "an RFC 3339 time (one without an offset is UTC)"}],
    "examples": ["7d", "12h", "2026-11-20", "2026-11-20T08:00:00Z"]}
_NS = {"type": "integer", "description": "Unix time in nanoseconds"}
_TASK = {"name": "task", "in": "path", "required": True, "schema": _ID, "description": "the task id"}
_HOST = {"name": "host", "in": "path", "required": True, "schema": _ID,
         "description": "the host the task ran on (the agent's default: the machine's short hostname)"}
_STATUS_ENUM = ["running", "finished", "lost"]
_TEXT = {"text/plain": {"schema": {"type": "string", "contentMediaType": "application/octet-stream"}}}


def _header(description: str, schema: Schema | None = None) -> Schema:
    return {"description": description, "schema": schema or {"type": "string"}}


def _error(description: str, headers: dict[str, Any] | None = None) -> Schema:
    resp: Schema = {"description": description, "content": {"application/json": {"schema": _ref("Error")}}}
    if headers:
        resp["headers"] = headers
    return resp


TOKEN_PATHS = ("/api/v1/tasks/{task}/hosts/{host}/tail", "/api/v1/tasks/{task}/hosts/{host}/log",
               "/api/v1/tasks/{task}/log")  # api/app.py takes ?token= on these only (GET and HEAD)


def _token_only_where_taken(paths: dict[str, Any]) -> dict[str, Any]:
    """Operations that do not take ?token= say so: bearer only, unless they need no token at all."""
    for path, item in paths.items():
        for method, op in item.items():
            if "security" not in op and not (path in TOKEN_PATHS and method in ("get", "head")):
                op["security"] = [{"bearer": []}]
    return paths


# Errors every route under /api/v1 can answer with.
_COMMON_ERRORS = {"401": {"$ref": "#/components/responses/Unauthorized"}}
_LOG_ERRORS = {"400": {"$ref": "#/components/responses/BadRequest"}, **_COMMON_ERRORS,
               "404": {"$ref": "#/components/responses/NotFound"},
               "502": {"$ref": "#/components/responses/StoreError"},
               "503": {"$ref": "#/components/responses/StoreUnavailable"}}
_CONTENT_RANGE_416 = {"Content-Range": _header("`bytes */SIZE`: the log's size in bytes")}

_LOG_HEADERS = {
    "ETag": _header('A strong validator `"<run_id>-<size>"`. It changes as a running log grows; If-Range '
                    "with an earlier ETag of the same run still matches, because logs only grow. An encoded "
                    'representation has a weak one of its own: `W/"<run_id>-<size>-zstd"`, `-gzip`.'),
    "Content-Encoding": _header("`zstd` or `gzip` as the request's `Accept-Encoding` weighs them (q-values; "
                                "zstd when alike), for whole answers only: a request with a Range or `start=` is "
                                "answered in identity. A finished log's stored zstd frames are sent as they are "
                                "(Content-Length is then that representation's, when all of it is); every other "
                                "byte is compressed on the fly (no Content-Length)"),
    "Vary": _header("`Accept-Encoding`"),
    "Accept-Ranges": _header("`bytes` (absent with `stream=`: offsets are the whole log's)"),
    "Cache-Control": _header("`no-cache`"),
}

_LOG_PARAMS = [
    _TASK, _HOST,
    {"name": "stream", "in": "query", "schema": {"type": "string", "enum": ["stdout", "stderr"]},
     "description": "only the chunks of one stream (Range and If-Range do not apply; with `start=` the answer "
                    "is a 400, as offsets are the whole log's)"},
    {"name": "follow", "in": "query", "schema": _FLAG,
     "description": "keep the response open, sending new bytes as they are written, until the task ends "
                    "(with the whole log or with `stream=`)"},
    {"name": "start", "in": "query", "schema": _OFFSET,
     "description": "progressive mode for pollers: the bytes from this offset to the log's current end, with "
                    "`X-Log-Size` and `X-More-Data`; poll again with `start=` the last `X-Log-Size`"},
    {"name": "Range", "in": "header", "schema": {"type": "string", "examples": ["bytes=0-1023", "bytes=-4096",
                                                                                "bytes=1048576-"]},
     "description": "one byte range; several ranges or other units are a 416"},
    {"name": "If-Range", "in": "header", "schema": {"type": "string"},
     "description": "an ETag: the Range is served only if it names this run at a size the log still has; "
                    "otherwise the whole log comes with 200"},
    {"name": "If-None-Match", "in": "header", "schema": {"type": "string"},
     "description": "ETags (or `*`): when one is the current representation's (weak comparison), the answer is "
                    "304 with no body — the log has not grown since"},
]

_LOG_RESPONSES: dict[str, Any] = {
    "200": {"description": "The whole log, byte-exact (stdout and stderr interleaved in arrival order). "
                           "`Content-Length` once the task has ended; a running log's body ends at its size "
                           "when asked, or with `follow=true` when the task ends.",
            "headers": {**_LOG_HEADERS,
                        "Content-Length": _header("the size, once the task has ended", {"type": "integer"}),
                        "X-Log-Size": _header("with `start=`: the log's size now", {"type": "integer"}),
                        "X-More-Data": _header("with `start=`: `true` while the task runs, so poll again",
                                               {"type": "string", "enum": ["true", "false"]})},
            "content": _TEXT},
    "304": {"description": "Not modified: If-None-Match names the current representation.",
            "headers": {"ETag": _LOG_HEADERS["ETag"]}},
    "206": {"description": "The requested range.",
            "headers": {**_LOG_HEADERS,
                        "Content-Range": _header("`bytes FIRST-LAST/SIZE`; SIZE is `*` while the task runs")},
            "content": _TEXT},
    "416": _error("The range (or `start=`) is past the end of the log, or not one byte range; or (`bytes_missing`, "
                  "with a `missing` list of [start, end) ranges) it covers bytes the archive does not hold "
                  "(dropped at the spool quota, or lost): ask for the bytes before or after them.", _CONTENT_RANGE_416),
    **_LOG_ERRORS,
}

_TAIL_PARAMS = [
    _TASK, _HOST,
    {"name": "from", "in": "query", "schema": _OFFSET,
     "description": "start at this byte offset (resume with the offset after the last message received)"},
    {"name": "lines", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": 100000, "default": 100},
     "description": "start with the last N lines (with `from=` too, the answer is a 400: give one)"},
    {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string", "pattern": "^([0-9]{1,19})?$"},
     "description": "SSE: the `id` of the last event received (overrides `from` and `lines`; empty: as if not "
                    "sent)"},
    {"name": "Accept", "in": "header", "required": True, "schema": {"type": "string", "enum": ["text/event-stream"]},
     "description": "`text/event-stream` for SSE (required over plain HTTP: without it the answer is 406); a "
                    "WebSocket client opens the URL with an Upgrade instead"},
]


def _head(get: dict[str, Any]) -> dict[str, Any]:
    """HEAD's responses: GET's statuses and headers, without bodies (errors too: HEAD has none)."""
    out: dict[str, Any] = {}
    for status, resp in get.items():
        if "$ref" in resp:
            resp = DOC_RESPONSES[resp["$ref"].rsplit("/", 1)[1]]
        out[status] = {"description": resp.get("description", "as GET"),
                       **({"headers": resp["headers"]} if "headers" in resp else {})}
    return out


def _paths() -> dict[str, Any]:
    return {
        "/api/v1/tasks": {"get": {
            "operationId": "listLogs", "summary": "Logs, newest first, one page at a time",
            "tags": ["logs"],
            "parameters": [
                {"name": "status", "in": "query", "schema": {"type": "string", "enum": _STATUS_ENUM}},
                {"name": "host", "in": "query", "schema": _ID_FILTER, "description": "empty: any host"},
                {"name": "task", "in": "query", "schema": _ID_FILTER, "description": "empty: any task"},
                {"name": "since", "in": "query", "schema": _TIME,
                 "description": "started since: a duration back from now, a date, an RFC 3339 time or Unix "
                                "nanoseconds"},
                {"name": "until", "in": "query", "schema": _TIME,
                 "description": "started before (exclusive), in the forms of `since`"},
                {"name": "silent_since", "in": "query", "schema": _TIME,
                 "description": "running logs that have written nothing since then (`10m`: silent for 10 minutes "
                                "or more), in the forms of `since`; a central listing knows a silence once it "
                                "lasted 60 s (docs/format.md, Catalog)"},
                {"name": "label", "in": "query", "style": "form", "explode": True,
                 "schema": {"type": "array", "maxItems": 16,
                            "items": {"type": "string", "pattern": "^[^=]+=", "maxLength": 256}},
                 "description": "`key=value`, repeatable: the log's labels must hold every one (a value may be "
                                "empty or hold `=`)"},
                {"name": "limit", "in": "query",
                 "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
                {"name": "cursor", "in": "query", "schema": {"type": "string", "pattern": CURSOR_PATTERN},
                 "description": "`next_cursor` of the previous page, as is: a position in the listing's order "
                                "(`STARTED_NS~TASK~HOST`); the page holds the logs after it"},
            ],
            "responses": {"200": {"description": "one page", "content": {"application/json": {"schema": {
                "type": "object", "required": ["logs", "next_cursor"],
                "properties": {"logs": {"type": "array", "items": _ref("LogSummary")},
                               "next_cursor": _nullable("string", description="null on the last page")}}}}},
                          "400": {"$ref": "#/components/responses/BadRequest"}, **_COMMON_ERRORS},
        }},
        "/api/v1/tasks/{task}/hosts/{host}": {"get": {
            "operationId": "getLog", "summary": "One log's manifest, with its live size while it runs",
            "tags": ["logs"], "parameters": [_TASK, _HOST],
            "responses": {"200": {"description": "the manifest", "content": {"application/json": {
                "schema": _ref("LogManifest")}}}, **_LOG_ERRORS},
        }},
        "/api/v1/tasks/{task}/hosts/{host}/log": {
            "get": {"operationId": "getLogBytes", "summary": "The log's bytes: whole, a Range, followed, or "
                                                             "progressively", "tags": ["logs"],
                    "parameters": _LOG_PARAMS, "responses": _LOG_RESPONSES},
            "head": {"operationId": "headLogBytes", "summary": "The headers of GET (ETag, size once finished)",
                     "tags": ["logs"], "parameters": _LOG_PARAMS, "responses": _head(_LOG_RESPONSES)},
        },
        "/api/v1/tasks/{task}/hosts/{host}/tail": {"get": {
            "operationId": "tailLog", "tags": ["logs"],
            "summary": "Live tail: a WebSocket, or Server-Sent Events with `Accept: text/event-stream`",
            "description": "Each message is a JSON `TailMessage`: data with the offset of its first byte, or an "
                           "event. SSE `id:` is the offset after the event, so a reconnect with `Last-Event-ID` "
                           "(or `from=`) continues with no gap and no duplicate. Text replaces invalid UTF-8; "
                           "exact bytes come from `/log`. After `end` (or `error`) the connection closes.",
            "parameters": _TAIL_PARAMS,
            "responses": {
                "101": {"description": "WebSocket: one text frame per TailMessage", "content": {
                    "application/json": {"schema": _ref("TailMessage")}}},
                "200": {"description": "SSE: `id: <offset after>` and `data: <TailMessage>` per event; "
                                       "`: ping` comments keep proxies open", "content": {
                    "text/event-stream": {"schema": {
                        "type": "object", "description": "one event", "required": ["data"], "properties": {
                            "event": {"const": "message"},
                            "id": {"type": "string", "pattern": "^[0-9]+$",
                                   "description": "the offset after the event (none on an `error` event)"},
                            "retry": {"type": "integer"},
                            "data": {"type": "string", "contentMediaType": "application/json",
                                     "contentSchema": _ref("TailMessage"),
                                     "description": "a JSON TailMessage"}}}}}},
                "406": _error("Neither a WebSocket upgrade nor `Accept: text/event-stream`."),
                "416": _error("`from` is past the end of a finished log.", _CONTENT_RANGE_416),
                **_LOG_ERRORS,
            },
        }},
        "/api/v1/tasks/{task}/hosts/{host}/index": {"get": {
            "operationId": "getLogIndex", "tags": ["logs"],
            "summary": "The chunk index of a byte range: each chunk's offset, length, lines, stream, flags, time",
            "description": "The records overlapping [start, end), at most 20,000 (`more`: ask again from the last "
                           "chunk's end). `line` is the number of lines that end before the first chunk, so a "
                           "client reading those bytes by Range numbers every line exactly (as `line_no` of "
                           "search and SQL). Chunks are cut at line ends per stream (docs/format.md).",
            "parameters": [_TASK, _HOST,
                           {"name": "start", "in": "query", "schema": {**_OFFSET, "default": 0}},
                           {"name": "end", "in": "query", "schema": _OFFSET,
                            "description": "default: the log's size"},
                           {"name": "last", "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 20_000},
                            "description": "the last N records before `end` instead, scanning back over the bytes "
                                           "held without a hole up to `end` (a hole ends every line), to `start` at "
                                           "most; `from` is where the scan stopped and `more` says to ask again "
                                           "with end=`from`. With `stream=`: where the line a stream has open at "
                                           "`end` begins (its last record not flagged partial) in one request"},
                           {"name": "stream", "in": "query", "schema": {"type": "string", "enum": ["stdout", "stderr"]},
                            "description": "only that stream's records: with `last`, before `end`; else the first "
                                           "20,000 from `start`, over the bytes held without a hole from there "
                                           "(where the line a stream has open at `start` ends; `to`: the scan "
                                           "covered [start, to), and `more` says to ask again from start=`to`)"}],
            "responses": {
                "200": {"description": "the records", "content": {"application/json": {"schema": {
                    "type": "object", "required": ["size", "status", "line", "columns", "chunks", "more"],
                    "properties": {
                        "size": {"type": "integer"}, "status": {"type": "string", "enum": _STATUS_ENUM},
                        "line": _nullable("integer", description="lines ended before the first chunk (null: "
                                                                 "no chunk)"),
                        "columns": {"type": "array", "items": {"type": "string"},
                                    "description": "offset, length, lines, stream, flags (1 partial, 2 "
                                                   "recovered), ts (ns)"},
                        "chunks": {"type": "array", "items": {"type": "array"}},
                        "more": {"type": "boolean"},
                        "from": {"type": "integer", "description": "with `last`: the scan covered [from, end)"},
                        "to": {"type": "integer",
                               "description": "with `stream` and no `last`: the scan covered [start, to)"}}}}}},
                "416": _error("`start` is past the end of the log.", _CONTENT_RANGE_416),
                **_LOG_ERRORS,
            },
        }},
        "/api/v1/tasks/{task}/log": {"get": {
            "operationId": "getTaskLogs", "tags": ["logs"],
            "summary": "Every host's log of a task, one after another, each under a header line "
                       "`==> TASK/HOST (STATUS, SIZE bytes) <==`",
            "parameters": [_TASK],
            "responses": {"200": {"description": "the logs", "content": _TEXT}, **_LOG_ERRORS},
        }},
        "/api/v1/query": {"post": {
            "operationId": "query", "tags": ["query"],
            "summary": "Read-only DuckDB SQL over the views `lines` and `logs`, with time and row limits",
            "parameters": [{"name": "format", "in": "query",
                            "schema": {"type": "string", "enum": ["json", "csv", "ndjson"], "default": "json"}}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["sql"], "additionalProperties": False,
                "properties": {"sql": {"type": "string", "minLength": 1, "pattern": "[^ \\t\\n\\r]",
                                       "description": "one read-only SELECT (not empty)", "examples": [
                    "SELECT host, ts, line FROM lines WHERE line ILIKE '%disk full%'"]}}}}}},
            "responses": {
                "200": {"description": "The rows, streamed. JSON ends with row_count, truncated, row_limit and "
                                       "elapsed_ms (and `error` if the query failed after rows were sent); CSV "
                                       "and NDJSON stop at the row limit, and a failure cuts them off.",
                        "headers": {"X-Row-Limit": _header("the most rows sent", {"type": "integer"})},
                        "content": {"application/json": {"schema": _ref("QueryResult")},
                                    "text/csv": {"schema": {"type": "string"}},
                                    "application/x-ndjson": {"schema": {"type": "string"}}}},
                "400": _error("Not JSON (or nested too deeply), no `sql` or an empty one, not one read-only "
                              "SELECT, outside the archive, over a limit, or a SQL error."),
                "413": _error("The body is over 1 MiB, or its `sql` over 64 KiB (`sql_too_large`)."),
                "403": _error("The token is of the read scope (api.tokens); SQL needs one of api.query_tokens."),
                **_COMMON_ERRORS},
        }},
        "/api/v1/search": {"get": {
            "operationId": "search", "tags": ["query"],
            "summary": "Archived lines containing a text (no SQL needed), newest first",
            "parameters": [
                {"name": "q", "in": "query", "required": True, "schema": {"type": "string", "minLength": 1},
                 "description": "the text to look for, literally"},
                {"name": "i", "in": "query", "schema": _FLAG,
                 "description": "ignore case"},
                {"name": "task", "in": "query", "schema": _ID_FILTER, "description": "empty: any task"},
                {"name": "host", "in": "query", "schema": _ID_FILTER, "description": "empty: any host"},
                {"name": "since", "in": "query", "schema": _TIME, "description": "as for /tasks"},
                {"name": "stream", "in": "query", "schema": {"type": "string", "enum": ["stdout", "stderr"]}},
                {"name": "limit", "in": "query",
                 "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
            ],
            "responses": {"200": {"description": "the matches", "content": {"application/json": {"schema": {
                "type": "object", "required": ["hits", "more"], "properties": {
                    "hits": {"type": "array", "items": _ref("SearchHit")}, "more": {"type": "boolean"},
                    "elapsed_ms": {"type": "integer"}}}}}},
                "400": {"$ref": "#/components/responses/BadRequest"},
                "404": _error("`task` (on `host`) has no log (`not_found`); a log without a match is a 200 with no "
                              "hits"), **_COMMON_ERRORS},
        }},
        "/": {"get": {
            "operationId": "webPage", "summary": "The web page: tasks, a live log view, search, downloads",
            "tags": ["web"], "security": [],
            "responses": {"200": {"description": "HTML (it holds no data; it calls this API with its token)",
                                  "content": {"text/html": {"schema": {"type": "string"}}}}},
        }},
        "/web/{name}": {"get": {
            "operationId": "webAsset", "summary": "The web page's scripts and styles", "tags": ["web"],
            "security": [], "parameters": [{"name": "name", "in": "path", "required": True,
                                            "schema": {"type": "string", "examples": ["app.js"]}}],
            "responses": {"200": {"description": "the file (ETag; 304 to If-None-Match)", "content": {
                "text/javascript": {"schema": {"type": "string"}}, "text/css": {"schema": {"type": "string"}}}},
                "404": {"$ref": "#/components/responses/NotFound"}},
        }},
        "/healthz": {"get": {
            "operationId": "healthz", "summary": "Liveness", "tags": ["operations"], "security": [],
            "responses": {"200": {"description": "alive", "content": {"application/json": {"schema": {
                "type": "object", "required": ["ok"], "properties": {"ok": {"const": True}}}}}}},
        }},
        "/readyz": {"get": {
            "operationId": "readyz", "summary": "Readiness: the API runs and its store answers (within 2 s)",
            "tags": ["operations"], "security": [],
            "responses": {"200": {"description": "ready", "content": {"application/json": {"schema": {
                "type": "object", "required": ["ok"], "properties": {"ok": {"const": True},
                                                                     "store_ms": {"type": "number"}}}}}},
                          "503": {"$ref": "#/components/responses/StoreUnavailable"}},
        }},
        "/metrics": {"get": {
            "operationId": "metrics", "summary": "Prometheus metrics of the API, and of the watcher beside it",
            "tags": ["operations"],
            "responses": {"200": {"description": "Prometheus text format 0.0.4", "content": {
                "text/plain": {"schema": {"type": "string"}}}}, **_COMMON_ERRORS},
        }},
        PATH: {"get": {
            "operationId": "openapi", "summary": "This document", "tags": ["operations"],
            "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {
                "schema": {"type": "object"}}}}, **_COMMON_ERRORS},
        }},
    }


def _schemas() -> dict[str, Any]:
    segment = {"type": "object", "description": "a sealed segment in the store", "properties": {
        "seq": {"type": "integer"}, "offset": {"type": "integer"}, "raw_size": {"type": "integer"},
        "stored_size": {"type": "integer"}, "index_size": {"type": "integer"}, "sha256": {"type": "string"},
        "compression": {"type": "string", "enum": ["zstd", "none"]}, "first_ts": _NS, "last_ts": _NS,
        "lines": {"type": "integer"},
        "chunks": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2}}}
    summary_props = {
        "task": _ID, "host": _ID, "run_id": {"type": "string"},
        "status": {"type": "string", "enum": _STATUS_ENUM}, "exit_code": _nullable("integer"),
        "started_ns": _NS, "ended_ns": _nullable("integer"),
        "size": _nullable("integer", description="bytes; of a running log: its sealed segments' as of the "
                                                 "catalog's last note (beside its spool: the exact size; the live "
                                                 "size is on the log's own route), null when not known"),
        "lines": _nullable("integer", description="of a running log: its sealed segments' as of the last note"),
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "command": {"type": "array", "items": {"type": "string"}},
    }
    return {
        "Error": {"type": "object", "required": ["error", "detail", "hint"], "properties": {
            "error": {"type": "string", "description": "a stable code, e.g. bad_id, bad_request, bad_range, "
                                                       "unauthorized, not_found, store_unavailable"},
            "detail": {"type": "string", "description": "what went wrong"},
            "hint": {"type": "string", "description": "what to do about it (may be empty)"}}},
        "LogSummary": {"type": "object", "required": [*summary_props, "silent_seconds", "end_reason"], "properties": {
            **summary_props,
            "end_reason": _nullable("string", description="how the run ended: `exit`, `signal`, `lost` (its agent "
                                    "died), or why logship ended it (`silence`: the --on-silence kill); null while "
                                    "running"),
            "silent_seconds": _nullable("number", description="a running log's seconds without output at the "
                                        "answer's time: beside its spool exact, else from the catalog, 0 until a "
                                        "silence lasted 60 s; null when not running"),
            "silent_since_ns": _nullable("integer", description="when a silent running log last wrote (null: not "
                                         "known to be silent)")}},
        "Segment": segment,
        "LogManifest": {"type": "object", "description": "the log's manifest (DESIGN §3) and its live state",
                        "required": ["task", "host", "run_id", "status", "live_size"],
                        "additionalProperties": True, "properties": {
            **summary_props, "version": {"const": 1}, "signal": _nullable("integer"),
            "compression": {"type": "string", "enum": ["zstd", "none"]},
            "segments": {"type": "array", "items": _ref("Segment")},
            "checkpoint": {"oneOf": [_ref("Segment"), {"type": "null"}],
                           "description": "the store's copy of the open segment's beginning"},
            "dropped": {"type": "array", "items": {"type": "object"},
                        "description": "byte ranges the store will never have: {seq, offset, raw_size, lines, reason: "
                                       "quota (dropped at the spool quota) | damaged (a spool file was damaged) | "
                                       "missing (in neither spool nor store), detail}"},
            "dropped_bytes": {"type": "integer"}, "updated_ns": _NS,
            "api_url": {"type": "string", "description": "while running: the API beside the spool (a central API "
                        "forwards live requests there only if its api.proxy_allow allows the host; ?stream= is always "
                        "served from checkpoints)"},
            "live_size": {"type": "integer", "description": "bytes readable now, spool included"},
            "end_reason": {"type": "string", "description": "why logship ended the run: `silence` (--on-silence "
                           "kill, exit code 124); absent when the task ended by itself"},
            "liveness": _ref("Liveness")}},
        "Liveness": liveness.SCHEMA,
        "TailData": {"type": "object", "required": ["offset", "ts", "stream", "data"], "properties": {
            "offset": {"type": "integer", "description": "byte offset of the first byte in the combined log"},
            "ts": _NS, "stream": {"type": "string", "enum": ["stdout", "stderr"]},
            "data": {"type": "string", "description": "the bytes as text, invalid UTF-8 replaced"}}},
        "TailEnd": {"type": "object", "required": ["event", "status", "exit_code"], "properties": {
            "event": {"const": "end"}, "status": {"type": "string", "enum": ["finished", "lost"]},
            "exit_code": _nullable("integer"), "signal": _nullable("integer"), "size": {"type": "integer"}}},
        "TailSkipped": {"type": "object", "required": ["event", "from", "to", "bytes"],
                        "description": "bytes that no longer exist (dropped at the spool quota) or were not sent",
                        "properties": {"event": {"const": "skipped"}, "from": {"type": "integer"},
                                       "to": {"type": "integer"}, "bytes": {"type": "integer"}}},
        "TailError": {"type": "object", "required": ["event", "error", "detail"], "properties": {
            "event": {"const": "error"}, "error": {"type": "string"}, "detail": {"type": "string"},
            "hint": {"type": "string"}}},
        "QueryResult": {"type": "object", "properties": {
            "columns": {"type": "array", "items": {"type": "object", "properties": {
                "name": {"type": "string"}, "type": {"type": "string"}}}},
            "rows": {"type": "array", "items": {"type": "object"}},
            "row_count": {"type": "integer"}, "truncated": {"type": "boolean"}, "row_limit": {"type": "integer"},
            "elapsed_ms": {"type": "integer"}, "error": _ref("Error")}},
        "SearchHit": {"type": "object", "properties": {
            "task": _ID, "host": _ID, "line_no": {"type": "integer"},
            "ts": _nullable("string", format="date-time"),
            "stream": {"type": "string", "enum": ["stdout", "stderr", "unknown"],
                       "description": "`unknown`: bytes recovered after an agent died"},
            "line": {"type": "string"}, "truncated": {"type": "boolean"}, "partial": {"type": "boolean"},
            "offset": {"type": "integer", "description": "byte offset of the line in the log"},
            "end": {"type": "integer"}, "url": {"type": "string", "description": "the log's /log route"},
            "range": {"type": "string", "description": "a Range header for the line's bytes at `url`"}}},
        "TailMessage": {"oneOf": [_ref("TailData"), _ref("TailEnd"), _ref("TailSkipped"), _ref("TailError")]},
    }


DOC_RESPONSES = {
    "BadRequest": _error("A bad id, parameter or header; nothing was changed."),
    "Unauthorized": _error("api.tokens is set and the request has no valid bearer token."),
    "NotFound": _error("No such log (ids are case-sensitive)."),
    "StoreError": _error("The object store answered with an error, or with an object that fails its check against "
                         "the manifest (`integrity_error`: damaged, truncated, missing or replaced; the detail names "
                         "the object). A check that fails after the answer began cuts the transfer instead: the "
                         "connection closes before the end, so a client knows to resume."),
    "StoreUnavailable": _error("The object store cannot be reached; retry later."),
}


def _document() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("logship")
    except PackageNotFoundError:  # run from a source tree that was not installed
        ver = "0"
    return {
        "openapi": "3.1.0",
        "info": {"title": "logship", "version": ver,
                 "summary": "Live and archived logs for long-running tasks",
                 "description": "Logs are identified by (task, host). Byte-exact bytes come from `/log`; "
                                "`/tail` is the live view as text. Errors are JSON `Error` bodies."},
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "tags": [{"name": "logs"}, {"name": "query"}, {"name": "operations"}, {"name": "web"},
                 {"name": "ibex", "description": "Nightingale ibex's read routes over `logship run --ibex` logs"}],
        "security": [{"bearer": []}, {"token": []}],
        "paths": _token_only_where_taken({**_paths(), **ibex.openapi_paths()}),
        "components": {
            "schemas": _schemas(),
            "responses": DOC_RESPONSES,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "a token from api.tokens (read, tail, search) or api.query_tokens "
                                          "(also SQL); required when the API is not on loopback"},
                "token": {"type": "apiKey", "in": "query", "name": "token",
                          "description": "the token of the Authorization header, for clients that cannot set one: "
                                         "taken only by GET …/hosts/{host}/tail (WebSocket, SSE) and GET/HEAD of "
                                         "…/hosts/{host}/log and …/tasks/{task}/log (download links); ignored "
                                         "elsewhere"},
            },
        },
    }


DOCUMENT = _document()
_BODY = json.dumps(DOCUMENT, indent=1)  # built once: the document is fixed for the process


@routes.get(PATH)
async def openapi(request: web.Request) -> web.Response:
    return web.Response(text=_BODY, content_type="application/json")

