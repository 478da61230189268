"""Object stores, chosen by URL: `s3://bucket/prefix` (s3.py) or `file:///path` (fs.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ConfigError
from .base import ObjectInfo, Store, StoreStats

if TYPE_CHECKING:
    from ..config import StoreConfig

__all__ = ["ObjectInfo", "Store", "StoreStats", "open_store"]


def open_store(cfg: StoreConfig) -> Store:
    """Build the store named by `cfg.url`. Call `await store.close()` when done."""
    if cfg.url.startswith("s3://"):
        from .s3 import S3Store  # imported lazily: the agent never loads botocore

        return S3Store(cfg)
    if cfg.url.startswith("file://"):
        from .fs import FileStore

        return FileStore(cfg)
    raise ConfigError(f"store.url = {cfg.url!r} is not supported", "use s3://BUCKET/PREFIX or file:///PATH")
