"""S3's errors as the project's own: botocore's, and aiohttp's from our own requests (s3http.py), become
ObjectNotFound / StoreUnavailable / StoreError with a hint the user can act on. Nothing above
shipper/store sees either library's errors.
"""

from __future__ import annotations

import aiohttp
from botocore.exceptions import (  # type: ignore[import-untyped]
    ClientError,
    CredentialRetrievalError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from ..errors import ObjectNotFound, StoreError, StoreUnavailable

CREDENTIALS_HINT = (
    "check store.access_key and store.secret_key (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
)
_NOT_FOUND_CODES = {"NoSuchKey", "NotFound", "404"}
_AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "InvalidSecurity",
               "TokenRefreshRequired", "AccessDenied", "AllAccessDisabled", "Forbidden", "403"}
_RETRY_CODES = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "RequestTimeoutException",
                "Throttling", "ThrottlingException", "TooManyRequests", "OperationAborted"}


class BadAnswer(Exception):
    """An answer of the store that is not S3's (not XML, a field missing): s3ops.py parses them."""


class RangeNotSatisfiable(Exception):
    """The range starts at or past the object's end; get() and open() answer it with no bytes."""


def translate(exc: BaseException, op: str, where: str, endpoint: str | None, bucket: str) -> StoreError:
    """`exc`, raised by `op` on `where` (an s3:// URL) at `endpoint` (None: AWS's), as the project's own error."""
    endpoint = endpoint or "the AWS default endpoint"
    if isinstance(exc, ClientError):
        code, status = error_code(exc), http_status(exc)
        message = exc.response.get("Error", {}).get("Message") or code
        if code in _NOT_FOUND_CODES or code == "NoSuchUpload" or (status == 404 and code != "NoSuchBucket"):
            return ObjectNotFound(f"{where} not found", "list the prefix to see which keys exist")
        if code == "NoSuchBucket":
            return StoreError(f"bucket {bucket!r} does not exist at {endpoint}",
                              "create the bucket, or fix the bucket in store.url (and store.endpoint)")
        if code in _AUTH_CODES or status == 403:
            return StoreError(f"{op} {where}: {code}: {message}",
                              f"{CREDENTIALS_HINT}; they must allow access to {bucket!r}")
        if code in ("AuthorizationHeaderMalformed", "PermanentRedirect"):
            return StoreError(f"{op} {where}: {code}: {message}", "check store.region and store.endpoint")
        if code in _RETRY_CODES or status >= 500 or status == 429:
            return StoreUnavailable(f"{op} {where}: {code}: {message}",
                                    f"the store at {endpoint} is overloaded or failing; logship retries")
        return StoreError(f"{op} {where}: {code}: {message}", "see the S3 documentation for this error code")
    if isinstance(exc, BadAnswer):
        return StoreUnavailable(f"{op} {where}: the store at {endpoint} gave a malformed answer: {exc}",
                                "check store.endpoint: it must be an S3-compatible server (or a proxy in front "
                                "of one that passes its answers whole); logship retries")
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError)):
        return StoreError(f"{op} {where}: no usable S3 credentials ({exc})", CREDENTIALS_HINT)
    if isinstance(exc, (BotoConnectionError, HTTPClientError, aiohttp.ClientError, OSError)):
        return StoreUnavailable(f"{op} {where}: cannot reach the store at {endpoint}: {exc or type(exc).__name__}",
                                "is the S3 endpoint up? check store.endpoint")
    return StoreError(f"{op} {where}: {exc}", "check the store.* settings (logship config prints them)")


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def http_status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
