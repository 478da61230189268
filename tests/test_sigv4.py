"""Our presigned GET URLs and header signatures are botocore's, byte for byte (shipper/store/sigv4.py), and the
S3 store uses them."""

from __future__ import annotations

import datetime
import urllib.parse

import botocore.auth  # type: ignore[import-untyped]
import botocore.session  # type: ignore[import-untyped]
import pytest
from botocore.awsrequest import AWSRequest  # type: ignore[import-untyped]
from botocore.config import Config as BotoConfig  # type: ignore[import-untyped]
from botocore.credentials import Credentials  # type: ignore[import-untyped]

from shipper.config import StoreConfig
from shipper.store import open_store
from shipper.store.sigv4 import Presigner

KEYS = ["p/catalog/v1/parts/day=2026-01-01/0000000000000000001-00000000000000aa.parquet",
        "p/catalog/v1/head/r-ffff~t~h~1ffff~W10", "a b/ü+%&=?.json", "logs/t/h/manifest.json"]


@pytest.mark.parametrize("token", [None, "session/token+="])
@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:8333", "https://s3.example.com:9000"])
def test_a_presigned_url_is_botocores(endpoint: str, token: str | None) -> None:
    client = botocore.session.get_session().create_client(
        "s3", region_name="eu-west-3", endpoint_url=endpoint, aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="wJal/rXUtnFEMI+K7MDENG", aws_session_token=token,
        config=BotoConfig(s3={"addressing_style": "path", "payload_signing_enabled": False}, signature_version="s3v4"))
    ours = Presigner(endpoint, "eu-west-3", "AKIDEXAMPLE", "wJal/rXUtnFEMI+K7MDENG", token)
    for key in KEYS:
        theirs = client.generate_presigned_url("get_object", Params={"Bucket": "bk", "Key": key}, ExpiresIn=900)
        date = urllib.parse.parse_qs(urllib.parse.urlsplit(theirs).query)["X-Amz-Date"][0]
        assert ours.url("bk", key, 900, amz_date=date) == theirs


@pytest.mark.parametrize("token", [None, "session/token+="])
@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:8333", "https://s3.example.com"])
def test_a_header_signature_is_botocores(endpoint: str, token: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """PUT, HEAD, ListObjectsV2 and DeleteObjects as botocore's S3 signer signs them with payload signing off."""
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: datetime.datetime(2026, 12, 5, 3, 4, 5))
    ours = Presigner(endpoint, "eu-west-3", "AKIDEXAMPLE", "wJal/rXUtnFEMI+K7MDENG", token)
    requests: list[tuple[str, str, dict[str, str], dict[str, str]]] = [
        ("PUT", key, {}, {"Content-MD5": "1B2M2Y8AsgTpgAmY7PhCfg=="}) for key in KEYS]
    requests += [("HEAD", KEYS[2], {}, {}), ("POST", "", {"delete": ""}, {"Content-MD5": "q83vEjRWeJA="}),
                 ("GET", "", {"list-type": "2", "prefix": "a b/ü+%&=?", "encoding-type": "url", "max-keys": "1000",
                              "delimiter": "/", "start-after": "a b/~", "continuation-token": "x+y/z=="}, {})]
    for method, key, query, headers in requests:
        url, sent = ours.request(method, "bk", key, query, headers, amz_date="20261205T030405Z")
        theirs = AWSRequest(method=method, url=url, headers=dict(headers), data=b"body")
        theirs.context["client_config"] = BotoConfig(s3={"payload_signing_enabled": False})
        botocore.auth.S3SigV4Auth(Credentials("AKIDEXAMPLE", "wJal/rXUtnFEMI+K7MDENG", token), "s3",
                                  "eu-west-3").add_auth(theirs)
        assert {k.lower(): v for k, v in theirs.headers.items()} == {k: v for k, v in sent.items() if k != "host"}
        assert sent["host"] == urllib.parse.urlsplit(url).netloc


@pytest.mark.asyncio(loop_scope="session")
async def test_the_s3_store_reads_with_its_own_signatures(s3_store_cfg: StoreConfig) -> None:
    store = open_store(s3_store_cfg)
    try:
        for i, key in enumerate(KEYS):
            await store.put(key, f"body {i}".encode())
        for i, key in enumerate(KEYS):  # the first GET checks against botocore; the rest are signed by sigv4.py
            assert await store.get(key) == f"body {i}".encode()
            assert await store.get(key, 2, 4) == b"dy"
        assert store._presigner is True  # type: ignore[attr-defined]
    finally:
        await store.close()
