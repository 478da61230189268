"""The delta object alone (shipper/format/delta.py): what a watcher writes reads back; anything else is a
DeltaDamaged naming the key, never another exception and never bytes."""

from __future__ import annotations

import random
import shutil
import struct
import subprocess

import pytest

from shipper import checkpoint
from shipper.errors import DamagedObject
from shipper.format import delta, index, names
from shipper.open_index import open_index_fault, sealed_ok
from shipper.spool.integrity import check_segment


def sample(start: int = 1000, n: int = 50, seed: int = 1) -> tuple[bytes, bytes]:
    """(index records, bytes) of `n` chunks of log lines from `start`."""
    rnd = random.Random(seed)
    data, recs, pos = b"", b"", start
    for i in range(n):
        line = b"line %d %s\n" % (i, bytes(rnd.choices(range(97, 123), k=rnd.randint(1, 80))))
        recs += index.pack(10 + i, 1_700_000_000_000_000_000 + i, pos, len(line), 1, 1 + i % 2, 0)
        data += line
        pos += len(line)
    return recs, data


def key(start: int, end: int, compression: str = "zstd", seq: int = 3) -> str:
    return names.delta_key("t", "h", seq, start, end, compression)


@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_round_trip(compression: str) -> None:
    recs, data = sample()
    blob = delta.encode(1000, recs, data, compression)
    d = delta.parse(key(1000, 1000 + len(data), compression), blob)
    assert (d.start, d.end, d.data, d.compression) == (1000, 1000 + len(data), data, compression)
    assert d.chunks == list(index.unpack(recs)) and d.stored_size == len(blob)
    assert blob[d.data_offset:] == (data if compression == "none" else blob[d.data_offset:])
    assert delta.encode(1000, recs, data, compression) == blob  # deterministic: one key, one content


@pytest.mark.skipif(shutil.which("zstd") is None, reason="no zstd command")
def test_zstdcat_prints_the_log_bytes_of_concatenated_deltas() -> None:
    recs, data = sample(0, 20)
    recs2, data2 = sample(len(data), 30, seed=2)
    blob = delta.encode(0, recs, data, "zstd") + delta.encode(len(data), recs2, data2, "zstd")
    out = subprocess.run(["zstd", "-dc"], input=blob, capture_output=True, check=True).stdout
    assert out == data + data2


def test_names_round_trip_and_sort() -> None:
    k = key(5, 17)
    assert k == "logs/t/h/00000003.d000000000000005-000000000000017.zst"
    assert names.parse_delta_name(k.rsplit("/", 1)[1]) == (3, 5, 17, "zstd")
    assert names.parse_delta_name("00000003.d000000000000017-000000000000005.zst") is None  # empty range
    assert names.parse_delta_name("00000003.d5-17.zst") is None
    assert names.parse_delta_name("00000003.log.zst") is None
    assert sorted([names.segment_key("t", "h", 3, "zstd"), names.index_key("t", "h", 3, "zstd"),
                   names.frames_key("t", "h", 3), k])[0] == k  # deltas list before the rest of their segment
    assert k.startswith(names.delta_prefix("t", "h", 3))
    with pytest.raises(ValueError):
        names.delta_key("t", "h", 3, 7, 7, "zstd")


def damaged(k: str, blob: bytes | memoryview) -> str:
    with pytest.raises(delta.DeltaDamaged) as info:
        delta.parse(k, blob)
    assert isinstance(info.value, DamagedObject) and info.value.key == k
    return str(info.value)


@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_truncated_anywhere_is_damaged(compression: str) -> None:
    recs, data = sample()
    blob = delta.encode(1000, recs, data, compression)
    k = key(1000, 1000 + len(data), compression)
    for cut in sorted({0, 1, 8, 35, 36, 37, len(blob) // 2, len(blob) - 1, *range(0, len(blob), 97)}):
        damaged(k, blob[:cut])


def test_renamed_is_damaged() -> None:
    recs, data = sample()
    blob = delta.encode(1000, recs, data, "zstd")
    end = 1000 + len(data)
    assert "its name" in damaged(key(1000, end + 1), blob)
    assert "its name" in damaged(key(999, end), blob)
    damaged(key(1000, end, "none"), blob)  # a zstd delta under a .raw name
    damaged("logs/t/h/00000003.log.zst", blob)


def test_garbage_and_flipped_bytes_are_damaged() -> None:
    recs, data = sample()
    blob = bytearray(delta.encode(1000, recs, data, "zstd"))
    k = key(1000, 1000 + len(data))
    rnd = random.Random(5)
    for _ in range(30):
        damaged(k, bytes(rnd.randbytes(rnd.randint(0, 3000))))
    for pos in [0, 4, 8, 12, 20, 28, 32, 40, len(blob) // 2, len(blob) - 2]:  # header, index, data, checksum
        bad = bytearray(blob)
        bad[pos] ^= 0x41
        damaged(k, bytes(bad))
    damaged(k, bytes(blob) + b"\0")  # bytes after the frame


def test_header_bounds_and_index_cover() -> None:
    recs, data = sample(0, 10)
    end = len(data)
    # an index that skips a byte, or covers less than the name says
    holey = recs[:index.RECORD_SIZE] + index.pack(99, 0, 1 + list(index.unpack(recs))[0].end, 5, 0, 1, 0)
    assert "does not follow" in damaged(key(0, end), delta.encode(0, holey + recs[2 * index.RECORD_SIZE:], data,
                                                                  "zstd"))
    short = recs[:-index.RECORD_SIZE]
    assert "covers" in damaged(key(0, end), delta.encode(0, short, data, "zstd"))
    # a header claiming a huge index or range is refused before anything is decompressed
    frame = struct.pack("<II", delta.SKIPPABLE_MAGIC, 28 + (1 << 30))
    head = struct.pack("<4sQQII", b"LSD1", 0, end, 10, 1 << 30)
    assert "header length" in damaged(key(0, end), frame + head)
    head = struct.pack("<4sQQII", b"LSD1", 0, 1 << 40, 10, 0)
    damaged(names.delta_key("t", "h", 3, 0, 1 << 40, "zstd"), struct.pack("<II", delta.SKIPPABLE_MAGIC, 28) + head)


def test_new_records_are_checked_over_columns_and_the_record_at_fault_named() -> None:
    """The watcher's check of the open index's new records (shipper/checkpoint.py `_follows`): contiguous from
    the chain's end, chunk numbers rising past its last, known streams, no empty chunk; the index bytes read
    are what goes into the delta, unpacked once into columns."""
    recs, _ = sample(start=1000, n=6)
    new = checkpoint.Records.of(recs + b"torn")  # a record cut by a crash mid-write is left out
    assert new.raw == recs and new.seq == tuple(range(10, 16)) and new.offset[0] == 1000
    assert checkpoint.Records.of(b"x" * 39).seq == () and new.after(4).raw == recs[4 * index.RECORD_SIZE:]
    chain = checkpoint.OpenChain(seq=3, start=0, pos=1000, records=7, last_chunk=9)
    assert checkpoint._follows(new, chain) is None
    assert checkpoint._follows(new.after(2), chain) == "record 8 is not contiguous with what comes before it"

    def with_record(i: int, **change: int) -> checkpoint.Records:
        fields = dict(zip(("seq", "ts_ns", "offset", "length", "lines", "stream", "flags"),
                          index.RECORD.unpack_from(recs, i * index.RECORD_SIZE), strict=True)) | change
        at = i * index.RECORD_SIZE
        return checkpoint.Records.of(recs[:at] + index.pack(**fields) + recs[at + index.RECORD_SIZE:])

    second = index.RECORD.unpack_from(recs, index.RECORD_SIZE)
    for i, change in [(0, {"seq": 9}), (1, {"seq": 10}), (3, {"offset": second[2] + 10_000}), (4, {"stream": 7}),
                      (5, {"length": 0}), (2, {"offset": second[2]})]:
        got = checkpoint._follows(with_record(i, **change), chain)
        assert got == f"record {8 + i} is not contiguous with what comes before it", (i, change)


def test_records_read_as_strided_columns_are_those_struct_unpacks(monkeypatch: pytest.MonkeyPatch) -> None:
    """`Records.of` reads columns as strided slices of native words where they are the format's: the same
    values as struct's unpacking of each record, extremes and garbage included (an open index is untrusted)."""
    from shipper import open_index

    r = random.Random(14)
    raw = b"".join(index.RECORD.pack(r.getrandbits(64), r.getrandbits(63) - (1 << 62), r.getrandbits(64),
                                     r.getrandbits(32), r.getrandbits(32), r.getrandbits(8), r.getrandbits(8))
                   for _ in range(300)) + bytes(r.getrandbits(8) for _ in range(40 * 5 + 17))  # and bytes at random
    fast = checkpoint.Records.of(raw)
    monkeypatch.setattr(open_index, "_COLUMNS", False)
    assert fast == checkpoint.Records.of(raw) and len(fast.seq) == 305


def test_a_sealed_index_is_passed_over_columns_only_when_the_full_check_finds_nothing() -> None:
    """The watcher's quick check of a sealed segment (shipper/open_index.py `sealed_ok`, before its upload)
    says yes only where check_segment (shipper/spool/integrity.py) finds no problem, no gap and no claim; any
    doubt goes to check_segment, which names and repairs it."""
    recs, data = sample(start=1000, n=8)
    size = len(data)

    def full(raw: bytes, size: int, start: int | None, nxt: int | None) -> bool:
        c = check_segment(raw, size, start, nxt, lambda a, b: data[a:b], "s", 0)
        return c.problem is None and not c.gap and not c.claimed

    def with_record(i: int, **change: int) -> bytes:
        fields = dict(zip(("seq", "ts_ns", "offset", "length", "lines", "stream", "flags"),
                          index.RECORD.unpack_from(recs, i * index.RECORD_SIZE), strict=True)) | change
        at = i * index.RECORD_SIZE
        return recs[:at] + index.pack(**fields) + recs[at + index.RECORD_SIZE:]

    ok = [(recs, size, 1000, 10), (recs, size, None, None), (recs, size, 1000, 3)]
    bad = [(recs + b"torn", size, 1000, 10), (b"", 0, 1000, 10), (recs, size + 1, 1000, 10),
           (recs, size - 1, 1000, 10), (recs, size, 900, 10), (recs, size, 1100, 10), (recs, size, 1000, 11),
           (recs[index.RECORD_SIZE:], size - index.RECORD.unpack_from(recs)[3], 1000, 10),  # a gap before it
           (with_record(3, seq=14), size, 1000, 10), (with_record(3, seq=12), size, 1000, 10),
           (with_record(2, stream=7), size, 1000, 10), (with_record(2, flags=4), size, 1000, 10),
           (with_record(2, lines=500), size, 1000, 10), (with_record(5, offset=0), size, 1000, 10)]
    for case in ok:
        assert sealed_ok(*case) and full(*case), case
    for i, case in enumerate(bad):
        assert not sealed_ok(*case), i
        assert not full(*case) or case[0] == b"", i  # an empty index of an empty file: nothing to upload
    assert sealed_ok(with_record(2, flags=index.PARTIAL | index.RECOVERED), size, 1000, 10)
    # the open segment's whole index (damage.py open_index_ok): the first record that does not follow
    assert open_index_fault(checkpoint.Records.of(recs), 1000, 10) is None
    assert open_index_fault(checkpoint.Records.of(b""), 1000, 10) is None
    for raw, pos, nxt, want in [(recs, 1001, 10, 0), (recs, 1000, 11, 0), (with_record(3, offset=0), 1000, 10, 3),
                                (with_record(5, stream=7), 1000, 10, 5)]:
        assert open_index_fault(checkpoint.Records.of(raw), pos, nxt) == want
