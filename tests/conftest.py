"""Fixtures for every test: one local SeaweedFS per session, and a store per backend under a fresh prefix;
the browser tests' fixtures are in tests/browser.py."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from shipper.commands import s3local
from shipper.config import StoreConfig
from shipper.store import Store, open_store

from .browser import browser, page, stack  # noqa: F401  (the browser tests' fixtures)
from .support import MakeConfig, config


@pytest.fixture(scope="session")
def local_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[s3local.LocalS3]:
    """The session's SeaweedFS. Tests may kill/pause/restart it, but must leave it running."""
    inst = s3local.start(tmp_path_factory.mktemp("s3"))
    try:
        yield inst
    finally:
        s3local.stop(inst)


@pytest.fixture
def s3_store_cfg(local_s3: s3local.LocalS3) -> StoreConfig:
    return local_s3.store_config(f"t-{secrets.token_hex(4)}/")


@pytest.fixture
def file_store_cfg(tmp_path: Path) -> StoreConfig:
    return StoreConfig(url=f"file://{tmp_path / 'archive'}")


@pytest.fixture(params=["file", "s3"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """An opened store of each backend; the S3 server starts only when an s3 case runs."""
    cfg: StoreConfig = request.getfixturevalue(f"{request.param}_store_cfg")
    st = open_store(cfg)
    try:
        yield st
    finally:
        await st.close()


@pytest.fixture(params=["file", "s3"])
def make_config(request: pytest.FixtureRequest, tmp_path: Path) -> MakeConfig:
    """Configs for a spool in tmp_path and a store of each backend (S3: a fresh prefix)."""
    base: dict[str, str] = {}
    if request.param == "s3":
        s3 = request.getfixturevalue("local_s3")
        base = {"LOGSHIP_STORE_URL": f"s3://{s3.bucket}/t-{secrets.token_hex(4)}/",
                "LOGSHIP_STORE_ENDPOINT": s3.endpoint, "LOGSHIP_STORE_ACCESS_KEY": s3.access_key,
                "LOGSHIP_STORE_SECRET_KEY": s3.secret_key}
    return lambda **env: config(tmp_path, **{**base, **env})
