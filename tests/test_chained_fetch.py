"""A chain delta that many readers want at once is one GET (followers of a log wake together, each taking a view
that checks the new deltas), and its outcome, good or damaged, is every reader's (shipper/format/chained.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from shipper.config import StoreConfig
from shipper.format import delta, index, names
from shipper.format.archive import IntegrityError
from shipper.format.chained import Chained
from shipper.format.parts import Part
from shipper.store import open_store

READERS = 20


def _delta() -> tuple[str, bytes, bytes]:
    data = b"".join(b"line %d of the log\n" % i for i in range(200))
    recs = index.pack(1, 1_700_000_000_000_000_000, 0, len(data), 200, 1, 0)
    return names.delta_key("t", "h", 1, 0, len(data), "zstd"), delta.encode(0, recs, data, "zstd"), data


async def test_readers_at_once_share_one_get_and_its_verdict(tmp_path: Path) -> None:
    store = open_store(StoreConfig(url=f"file://{tmp_path / 'archive'}"))
    key, blob, data = _delta()
    await store.put(key, blob)
    notes: list[IntegrityError] = []
    part = Part(seq=1, offset=0, size=len(data), kind="delta", key=key, stored=len(blob))
    try:
        gets0 = store.stats.requests.get("get_object", 0)
        chained = Chained(store, notes.append)
        got = await asyncio.gather(*(chained.chain_delta(part) for _ in range(READERS)))
        assert all(d.data == data for d in got)
        assert store.stats.requests.get("get_object", 0) - gets0 == 1

        # a reader that goes away mid-GET does not cancel it for the others
        chained = Chained(store, notes.append)
        first = asyncio.ensure_future(chained.chain_delta(part))
        others = [asyncio.ensure_future(chained.chain_delta(part)) for _ in range(3)]
        await asyncio.sleep(0)
        first.cancel()
        assert all(d.data == data for d in await asyncio.gather(*others))

        # a damaged delta: one GET, and every reader gets the integrity error, none a byte of it
        await store.put(key, blob[:-1] + bytes([blob[-1] ^ 1]))
        chained = Chained(store, notes.append)
        gets0 = store.stats.requests.get("get_object", 0)
        short = Part(seq=1, offset=0, size=len(data), kind="delta", key=key, stored=len(blob))
        outcomes = await asyncio.gather(*(chained.chain_delta(short) for _ in range(READERS)), return_exceptions=True)
        assert all(isinstance(o, IntegrityError) for o in outcomes), outcomes
        assert store.stats.requests.get("get_object", 0) - gets0 == 1
    finally:
        await store.close()


if __name__ == "__main__":
    pytest.main([__file__])
