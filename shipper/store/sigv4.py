"""Presigned GET URLs (AWS Signature Version 4, query string) without botocore's request machinery.

botocore presigns a GET in ≈ 0.4 ms of event-loop CPU (endpoint rules, event hooks, a request object); a
catalog rebuild GETs one manifest per log, and that was a third of its time (docs/catalog.md). The
signature itself is a SHA-256 and an HMAC (the day's signing key is kept): ≈ 20 µs. s3.py uses it only
once this module's URL, signed at the same second, was byte for byte the one botocore gave.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import urllib.parse
from dataclasses import dataclass, field

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED = "UNSIGNED-PAYLOAD"


def _quote(text: str, safe: str = "-_.~") -> str:
    """RFC 3986 encoding as SigV4 wants it: every byte but the unreserved ones."""
    return urllib.parse.quote(text, safe=safe)


@dataclass
class Presigner:
    """Signs GETs of path-style URLs `<endpoint>/<bucket>/<key>` for one set of credentials."""

    endpoint: str  # scheme://host[:port], no trailing slash
    region: str
    access_key: str
    secret_key: str
    token: str | None = None
    _keys: dict[str, bytes] = field(default_factory=dict, compare=False)  # day -> signing key

    def _signing_key(self, day: str) -> bytes:
        key = self._keys.get(day)
        if key is None:
            k = hmac.new(f"AWS4{self.secret_key}".encode(), day.encode(), hashlib.sha256).digest()
            for part in (self.region, "s3", "aws4_request"):
                k = hmac.new(k, part.encode(), hashlib.sha256).digest()
            self._keys = {day: k}  # one day at a time
            key = k
        return key

    def url(self, bucket: str, key: str, expires: int, now: float | None = None, amz_date: str | None = None) -> str:
        """The presigned URL of a GET of `key`, valid `expires` seconds from `now` (or from `amz_date`)."""
        amz_date = amz_date or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
        day = amz_date[:8]
        scope = f"{day}/{self.region}/s3/aws4_request"
        parts = urllib.parse.urlsplit(self.endpoint)
        path = f"{parts.path.rstrip('/')}/{_quote(bucket)}/{_quote(key, '-_.~/')}"
        query = {"X-Amz-Algorithm": ALGORITHM, "X-Amz-Credential": f"{self.access_key}/{scope}",
                 "X-Amz-Date": amz_date, "X-Amz-Expires": str(expires), "X-Amz-SignedHeaders": "host"}
        if self.token:
            query["X-Amz-Security-Token"] = self.token
        pairs = {k: f"{_quote(k)}={_quote(v)}" for k, v in query.items()}
        canonical_query = "&".join(pairs[k] for k in sorted(pairs))
        canonical = "\n".join(("GET", path, canonical_query, f"host:{parts.netloc}", "", "host", UNSIGNED))
        to_sign = "\n".join((ALGORITHM, amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()))
        signature = hmac.new(self._signing_key(day), to_sign.encode(), hashlib.sha256).hexdigest()
        # in botocore's order (as built), so that s3.py can compare the two URLs byte for byte
        return f"{parts.scheme}://{parts.netloc}{path}?{'&'.join(pairs.values())}&X-Amz-Signature={signature}"

