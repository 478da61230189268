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
    _cache: dict[tuple[str, int], tuple[bytes, str, str, str]] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        parts = urllib.parse.urlsplit(self.endpoint)
        self._scheme, self._netloc, self._path = parts.scheme, parts.netloc, parts.path.rstrip("/")

    def _fixed(self, day: str, expires: int) -> tuple[bytes, str, str, str]:
        """What every URL of `day` shares: the signing key, the query before X-Amz-Date, and after it (as signed,
        sorted; and as sent, in botocore's order)."""
        got = self._cache.get((day, expires))
        if got is None:
            k = hmac.new(f"AWS4{self.secret_key}".encode(), day.encode(), hashlib.sha256).digest()
            for part in (self.region, "s3", "aws4_request"):
                k = hmac.new(k, part.encode(), hashlib.sha256).digest()
            before = (f"X-Amz-Algorithm={ALGORITHM}&X-Amz-Credential="
                      f"{_quote(f'{self.access_key}/{day}/{self.region}/s3/aws4_request')}")
            token = f"&X-Amz-Security-Token={_quote(self.token)}" if self.token else ""
            signed = f"&X-Amz-Expires={expires}{token}&X-Amz-SignedHeaders=host"
            sent = f"&X-Amz-Expires={expires}&X-Amz-SignedHeaders=host{token}"
            got = self._cache[(day, expires)] = (k, before, signed, sent)
            while len(self._cache) > 4:
                del self._cache[next(iter(self._cache))]
        return got

    def url(self, bucket: str, key: str, expires: int, now: float | None = None, amz_date: str | None = None) -> str:
        """The presigned URL of a GET of `key`, valid `expires` seconds from `now` (or from `amz_date`)."""
        amz_date = amz_date or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
        day = amz_date[:8]
        signing_key, before, signed, sent = self._fixed(day, expires)
        path = f"{self._path}/{_quote(bucket)}/{_quote(key, '-_.~/')}"
        query = f"{before}&X-Amz-Date={amz_date}"
        canonical = f"GET\n{path}\n{query}{signed}\nhost:{self._netloc}\n\nhost\n{UNSIGNED}"
        to_sign = (f"{ALGORITHM}\n{amz_date}\n{day}/{self.region}/s3/aws4_request\n"
                   f"{hashlib.sha256(canonical.encode()).hexdigest()}")
        signature = hmac.new(signing_key, to_sign.encode(), hashlib.sha256).hexdigest()
        # in botocore's order, so that s3.py can compare the two URLs byte for byte
        return f"{self._scheme}://{self._netloc}{path}?{query}{sent}&X-Amz-Signature={signature}"
