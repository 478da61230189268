"""Our header signatures are botocore's, byte for byte (shipper/store/sigv4.py), and the S3 store uses them
without creating botocore's client when its keys are static."""

from __future__ import annotations

import dataclasses
import datetime
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import botocore.auth  # type: ignore[import-untyped]
import botocore.session  # type: ignore[import-untyped]
import pytest
from botocore.awsrequest import AWSRequest  # type: ignore[import-untyped]
from botocore.config import Config as BotoConfig  # type: ignore[import-untyped]
from botocore.credentials import Credentials  # type: ignore[import-untyped]
from botocore.exceptions import PartialCredentialsError  # type: ignore[import-untyped]

from shipper.config import StoreConfig
from shipper.errors import ObjectNotFound
from shipper.format import reader
from shipper.store import open_store
from shipper.store.s3 import S3Store
from shipper.store.sigv4 import Presigner
from shipper.watcher import Watcher

from .support import MakeConfig, agent_env, run_agent, spooled

KEYS = ["p/catalog/v1/parts/day=2026-01-01/0000000000000000001-00000000000000aa.parquet",
        "p/catalog/v1/head/r-ffff~t~h~1ffff~W10", "a b/ü+%&=?.json", "logs/t/h/manifest.json"]


@pytest.mark.parametrize("token", [None, "session/token+="])
@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:8333", "https://s3.example.com"])
def test_a_header_signature_is_botocores(endpoint: str, token: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """GET, PUT, HEAD, ListObjectsV2 and DeleteObjects as botocore's S3 signer signs them with payload signing off."""
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: datetime.datetime(2026, 12, 5, 3, 4, 5))
    ours = Presigner(endpoint, "eu-west-3", "AKIDEXAMPLE", "wJal/rXUtnFEMI+K7MDENG", token)
    requests: list[tuple[str, str, dict[str, str], dict[str, str]]] = [
        ("PUT", key, {}, {"Content-MD5": "1B2M2Y8AsgTpgAmY7PhCfg=="}) for key in KEYS]
    requests += [("GET", key, {}, {}) for key in KEYS] + [("GET", key, {}, {"Range": "bytes=2-3"}) for key in KEYS]
    requests += [("GET", KEYS[0], {}, {"Range": "bytes=16777216-"}), ("HEAD", KEYS[2], {}, {}),
                 ("POST", "", {"delete": ""}, {"Content-MD5": "q83vEjRWeJA="}),
                 ("GET", "", {"list-type": "2", "prefix": "a b/ü+%&=?", "encoding-type": "url", "max-keys": "1000",
                              "delimiter": "/", "start-after": "a b/~", "continuation-token": "x+y/z=="}, {})]
    for method, key, query, headers in requests:
        url, sent = ours.request(method, "bk", key, query, headers, amz_date="20261205T030405Z")
        theirs = AWSRequest(method=method, url=url, headers=dict(headers), data=b"" if method == "GET" else b"body")
        theirs.context["client_config"] = BotoConfig(s3={"payload_signing_enabled": False})
        botocore.auth.S3SigV4Auth(Credentials("AKIDEXAMPLE", "wJal/rXUtnFEMI+K7MDENG", token), "s3",
                                  "eu-west-3").add_auth(theirs)
        assert {k.lower(): v for k, v in theirs.headers.items()} == {k: v for k, v in sent.items() if k != "host"}
        assert sent["host"] == urllib.parse.urlsplit(url).netloc


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.parametrize("make_config", ["s3", "rclone"], indirect=True)
async def test_a_watcher_with_static_keys_ships_a_log_without_botocores_client(make_config: MakeConfig) -> None:
    """The start of a log aborts uploads a crashed watcher left (ListMultipartUploads): ours too, so one ship
    of a small log never creates botocore's S3 client (≈ 16 MB of the watcher's memory)."""
    cfg = make_config()
    res = run_agent(cfg.spool_dir, "small", ["sh", "-c", "seq 1 1000; echo oops >&2"], env=agent_env(cfg))
    store = open_store(cfg.store)
    assert isinstance(store, S3Store)
    try:
        w = Watcher(cfg, store)
        await w.run_once()
        while await w.copies.drain():  # as `logship watch --once`: the query copies, then their manifest
            await w.run_once()
        assert w.stats["segments_uploaded"] >= 1
        assert await reader.read_all(store, "small", "h1") == spooled(cfg.spool_dir, "small")
        assert await reader.read_all(store, "small", "h1", "stdout") == res.stdout
        assert store.stats.requests["list_multipart_uploads"] >= 1
        assert store._client is None and store._ops.ours
    finally:
        await store.close()


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.parametrize("keys_in", ["config", "environment"])
async def test_the_s3_store_signs_static_keys_without_botocores_client(
        s3_store_cfg: StoreConfig, keys_in: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every request of a store whose keys are static is ours, and botocore's S3 client (≈ 16 MB of the API's
    memory) is never created."""
    if keys_in == "environment":
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_store_cfg.access_key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_store_cfg.secret_key)
        s3_store_cfg = dataclasses.replace(s3_store_cfg, access_key="", secret_key="")
    store = open_store(s3_store_cfg)
    assert isinstance(store, S3Store)
    try:
        for i, key in enumerate(KEYS):
            await store.put(key, f"body {i}".encode())
        for i, key in enumerate(KEYS):
            assert await store.get(key) == f"body {i}".encode()
            assert await store.get(key, 2, 4) == b"dy"
            assert await store.get(key, 100) == b""  # past the end: S3's 416, an empty read
            assert b"".join([piece async for piece in store.open(key, 5)]) == str(i).encode()
            assert (await store.head(key)).size == len(f"body {i}")
        assert len(await store.list("")) == len(KEYS)
        await store.delete(KEYS)
        with pytest.raises(ObjectNotFound):
            await store.get(KEYS[0])
        assert store.stats.requests["get_object"] >= 4 * len(KEYS)
        assert store._client is None and store._ops.ours
    finally:
        await store.close()


@pytest.mark.asyncio(loop_scope="session")
async def test_keys_from_botocores_chain_sign_our_requests_too(
        s3_store_cfg: StoreConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys in a credentials file (a profile): botocore's client finds them, our signatures carry them."""
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    files = tmp_path / "credentials"
    files.write_text(f"[default]\naws_access_key_id = {s3_store_cfg.access_key}\n"
                     f"aws_secret_access_key = {s3_store_cfg.secret_key}\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(files))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    store = open_store(dataclasses.replace(s3_store_cfg, access_key="", secret_key=""))
    assert isinstance(store, S3Store) and store._ops._static is None
    try:
        await store.put("chain/a", b"from a profile")
        assert await store.get("chain/a", 5) == b"a profile"
        assert store._client is not None and store._ops.ours
        assert store.stats.requests["get_object"] == 1 and store.stats.requests["put_object"] == 1
    finally:
        await store.close()


ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
       "AWS_CREDENTIAL_EXPIRATION", "AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE")


@pytest.mark.parametrize("env", [
    {"AWS_ACCESS_KEY_ID": "AKENV", "AWS_SECRET_ACCESS_KEY": "env/secret"},
    {"AWS_ACCESS_KEY_ID": "AKENV", "AWS_SECRET_ACCESS_KEY": "env/secret", "AWS_SESSION_TOKEN": "tok+/="},
    {"AWS_ACCESS_KEY_ID": "AKENV", "AWS_SECRET_ACCESS_KEY": "env/secret", "AWS_SECURITY_TOKEN": "old",
     "AWS_SESSION_TOKEN": "new"},
    {"AWS_ACCESS_KEY_ID": "AKENV", "AWS_SECRET_ACCESS_KEY": "env/secret", "AWS_PROFILE": "other"},
    {"AWS_ACCESS_KEY_ID": "AKENV", "AWS_SECRET_ACCESS_KEY": "env/secret",
     "AWS_CREDENTIAL_EXPIRATION": "2099-01-01T00:00:00Z"},
    {"AWS_ACCESS_KEY_ID": "AKENV"},
    {"AWS_PROFILE": "other"},
])
@pytest.mark.parametrize("config_keys", [("", ""), ("AKCFG", "cfg/secret")])
def test_static_keys_are_the_ones_botocores_chain_finds(
        env: dict[str, str], config_keys: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Our signer of static keys has botocore's credentials, or there is none and botocore's client signs."""
    files = tmp_path / "credentials"
    files.write_text("[other]\naws_access_key_id = AKFILE\naws_secret_access_key = file/secret\n")
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(files))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    cfg = StoreConfig(url="s3://bk/p", endpoint="http://127.0.0.1:1", region="eu-west-3",
                      access_key=config_keys[0], secret_key=config_keys[1])
    ours = S3Store(cfg)._ops._static
    try:
        client = botocore.session.get_session().create_client(
            "s3", region_name=cfg.region, endpoint_url=cfg.endpoint, aws_access_key_id=cfg.access_key or None,
            aws_secret_access_key=cfg.secret_key or None)
    except PartialCredentialsError:  # botocore's client raises it, translated with a hint (test_store_contract)
        assert ours is None
        return
    theirs = client._request_signer._credentials
    if ours is None:  # botocore's client: keys from a file, that expire, or none at all
        assert theirs is None or theirs.access_key == "AKFILE" or "AWS_CREDENTIAL_EXPIRATION" in env
        return
    assert (ours.access_key, ours.secret_key, ours.token) == (theirs.access_key, theirs.secret_key, theirs.token)
    assert (ours.endpoint, ours.region) == (cfg.endpoint, cfg.region)


def test_no_static_signer_without_an_endpoint() -> None:
    """AWS's own endpoints are botocore's rules to pick (region, FIPS, dual-stack): its client signs."""
    cfg = StoreConfig(url="s3://bk/p", region="eu-west-3", access_key="AK", secret_key="sk")
    assert S3Store(cfg)._ops._static is None


class _Sent(Exception):
    """Raised by the hook below: the request botocore would send, signed, goes no further."""


@pytest.mark.parametrize("token", [None, "session/token+="])
def test_multipart_upload_requests_are_signed_as_botocores(token: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """ListMultipartUploads (paged) and AbortMultipartUpload: the URL's path and query and the Authorization
    header of ours are those of the request botocore's S3 client sends (its serializer, not our reading of it)."""
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: datetime.datetime(2026, 12, 5, 3, 4, 5))
    endpoint, prefix, key = "http://127.0.0.1:8333", "p/logs/a b+ü=&/", "p/logs/a b+ü=&/h/00000001.log"
    client = botocore.session.get_session().create_client(
        "s3", region_name="eu-west-3", endpoint_url=endpoint, aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="wJal/rXUtnFEMI+K7MDENG", aws_session_token=token,
        config=BotoConfig(s3={"addressing_style": "path", "payload_signing_enabled": False},
                          retries={"total_max_attempts": 1}, request_checksum_calculation="when_required"))
    sent: list[AWSRequest] = []

    def capture(request: AWSRequest, **_: object) -> None:
        sent.append(request)
        raise _Sent

    client.meta.events.register("before-send.s3", capture)
    ours = Presigner(endpoint, "eu-west-3", "AKIDEXAMPLE", "wJal/rXUtnFEMI+K7MDENG", token)
    cases: list[tuple[Callable[[], object], tuple[str, str, dict[str, str]]]] = [
        (lambda: client.list_multipart_uploads(Bucket="bk", Prefix=prefix, MaxUploads=1000),
         ("GET", "", {"uploads": "", "prefix": prefix, "max-uploads": "1000"})),
        (lambda: client.list_multipart_uploads(Bucket="bk", Prefix=prefix, MaxUploads=1, KeyMarker=key,
                                               UploadIdMarker="id/+="),
         ("GET", "", {"uploads": "", "prefix": prefix, "max-uploads": "1", "key-marker": key,
                      "upload-id-marker": "id/+="})),
        (lambda: client.abort_multipart_upload(Bucket="bk", Key=key, UploadId="2~a/b+c="),
         ("DELETE", key, {"uploadId": "2~a/b+c="})),
    ]
    for call, (method, k, query) in cases:
        with pytest.raises(_Sent):
            call()
        theirs = sent.pop()
        url, headers = ours.request(method, "bk", k, query, amz_date="20261205T030405Z")
        assert theirs.method == method
        ours_url, their_url = urllib.parse.urlsplit(url), urllib.parse.urlsplit(theirs.url)
        assert ours_url.path == their_url.path
        assert (urllib.parse.parse_qs(ours_url.query, keep_blank_values=True)
                == urllib.parse.parse_qs(their_url.query, keep_blank_values=True))
        signed = {k.lower(): v.decode() if isinstance(v, bytes) else v for k, v in theirs.headers.items()
                  if k.lower() in ("authorization", "x-amz-date", "x-amz-content-sha256", "x-amz-security-token")}
        assert {k: v for k, v in headers.items() if k != "host"} == signed
