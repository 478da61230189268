"""The project's own errors. Every one carries a hint the user can act on."""

from __future__ import annotations


class LogshipError(Exception):
    """Base error: `str()` gives the message and the hint on one line."""

    code = "error"

    def __init__(self, detail: str, hint: str = "") -> None:
        super().__init__(detail)
        self.detail = detail
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.detail} (hint: {self.hint})" if self.hint else self.detail


class ConfigError(LogshipError):
    code = "bad_config"


class InvalidId(LogshipError):
    code = "bad_id"


class LogExists(LogshipError):
    code = "log_exists"


class StoreError(LogshipError):
    """Anything the store said that is not 'not found'."""

    code = "store_error"


class ObjectNotFound(StoreError):
    code = "not_found"


class StoreUnavailable(StoreError):
    """The store cannot be reached or failed in a way worth retrying."""

    code = "store_unavailable"


class DamagedObject(LogshipError):
    """An object of the store (or a file of the spool) is not what logship wrote: malformed, short, or
    its bytes do not match their checksum. It costs its own log, never the process or another log."""

    code = "damaged"


class SpoolError(LogshipError):
    code = "spool_error"
