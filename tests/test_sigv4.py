"""Our presigned GET URLs are botocore's, byte for byte (shipper/store/sigv4.py), and the S3 store uses them."""

from __future__ import annotations

import urllib.parse

import botocore.session  # type: ignore[import-untyped]
import pytest
from botocore.config import Config as BotoConfig  # type: ignore[import-untyped]

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
