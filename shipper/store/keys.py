"""The object keys both backends accept: what is valid on one is valid on the other, so a test over the file
store says something about S3, and no key a caller builds can climb out of the store's root on disk."""

from __future__ import annotations

from ..errors import StoreError

# The store's own object, under its root beside logs/ and catalog/: a PUT asking the server whether it checks
# x-amz-checksum-sha256 (shipper/store/s3checksum.py), refused by a server that does, deleted if taken. No reader
# lists it.
CHECKSUM_PROBE_KEY = ".logship/checksum-probe"


def check_dir_prefix(prefix: str) -> str:
    """`prefix` if it is a prefix list_dirs can take: a safe key prefix, empty or ending in "/"."""
    check_key(prefix, prefix=True)
    if prefix and not prefix.endswith("/"):
        raise StoreError(f"list_dirs({prefix!r}): the prefix must end with '/'",
                         "build it with shipper.format.names (e.g. task_prefix)")
    return prefix


def check_key(key: str, *, prefix: bool = False) -> str:
    """Return `key` if it is a safe relative key, else raise StoreError.

    Both backends use this so that a key valid on one is valid on the other. A `prefix` may be empty
    or end with "/", a key may not.
    """
    if not isinstance(key, str):
        raise StoreError(f"object key {key!r} is not a string", "keys come from shipper.format.names")
    if prefix and key == "":
        return key
    parts = key.split("/")
    if prefix and parts[-1] == "":
        parts.pop()
    if key.startswith("/") or "\0" in key or any(p in ("", ".", "..") for p in parts):
        raise StoreError(
            f"object key {key!r} is not allowed",
            "keys are relative, '/'-separated, with no empty, '.' or '..' segments "
            "(build them with shipper.format.names)",
        )
    return key
