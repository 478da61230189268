"""AWS Signature Version 4 without botocore's request machinery: presigned GET URLs (query string) and
header-signed requests (PUT, HEAD, LIST, DeleteObjects), for one set of credentials.

botocore presigns a GET in ≈ 0.4 ms of event-loop CPU (endpoint rules, event hooks, a request object) and
sends any other request in ≈ 2 ms; a catalog rebuild GETs one manifest per log, a checkpoint is one PUT.
The signature itself is a SHA-256 and an HMAC (the day's signing key is kept): ≈ 20 µs. s3.py presigns
with this module once its URL, signed at the same second, was byte for byte the one botocore gave; the
header signatures share that key and canonical path (tests/test_sigv4.py checks them against botocore's
signer), and a server that refuses one sends s3.py back to botocore for the store's life.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import urllib.parse
from collections.abc import Mapping
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
    _keys: dict[str, bytes] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        parts = urllib.parse.urlsplit(self.endpoint)
        self._scheme, self._netloc, self._path = parts.scheme, parts.netloc, parts.path.rstrip("/")

    def _fixed(self, day: str, expires: int) -> tuple[bytes, str, str, str]:
        """What every URL of `day` shares: the signing key, the query before X-Amz-Date, and after it (as signed,
        sorted; and as sent, in botocore's order)."""
        got = self._cache.get((day, expires))
        if got is None:
            k = self._signing_key(day)
            before = (f"X-Amz-Algorithm={ALGORITHM}&X-Amz-Credential="
                      f"{_quote(f'{self.access_key}/{day}/{self.region}/s3/aws4_request')}")
            token = f"&X-Amz-Security-Token={_quote(self.token)}" if self.token else ""
            signed = f"&X-Amz-Expires={expires}{token}&X-Amz-SignedHeaders=host"
            sent = f"&X-Amz-Expires={expires}&X-Amz-SignedHeaders=host{token}"
            got = self._cache[(day, expires)] = (k, before, signed, sent)
            while len(self._cache) > 4:
                del self._cache[next(iter(self._cache))]
        return got

    def _signing_key(self, day: str) -> bytes:
        """The day's key, derived from the secret: the same for URLs and headers."""
        k = self._keys.get(day)
        if k is None:
            k = hmac.new(f"AWS4{self.secret_key}".encode(), day.encode(), hashlib.sha256).digest()
            for part in (self.region, "s3", "aws4_request"):
                k = hmac.new(k, part.encode(), hashlib.sha256).digest()
            self._keys[day] = k
            while len(self._keys) > 2:
                del self._keys[next(iter(self._keys))]
        return k

    def _path_of(self, bucket: str, key: str) -> str:
        """The URL path, as sent and as signed (S3 signs it as sent, encoded once)."""
        path = f"{self._path}/{_quote(bucket)}"
        return f"{path}/{_quote(key, '-_.~/')}" if key else path

    def url(self, bucket: str, key: str, expires: int, now: float | None = None, amz_date: str | None = None) -> str:
        """The presigned URL of a GET of `key`, valid `expires` seconds from `now` (or from `amz_date`)."""
        amz_date = amz_date or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
        day = amz_date[:8]
        signing_key, before, signed, sent = self._fixed(day, expires)
        path = self._path_of(bucket, key)
        query = f"{before}&X-Amz-Date={amz_date}"
        canonical = f"GET\n{path}\n{query}{signed}\nhost:{self._netloc}\n\nhost\n{UNSIGNED}"
        to_sign = (f"{ALGORITHM}\n{amz_date}\n{day}/{self.region}/s3/aws4_request\n"
                   f"{hashlib.sha256(canonical.encode()).hexdigest()}")
        signature = hmac.new(signing_key, to_sign.encode(), hashlib.sha256).hexdigest()
        # in botocore's order, so that s3.py can compare the two URLs byte for byte
        return f"{self._scheme}://{self._netloc}{path}?{query}{sent}&X-Amz-Signature={signature}"

    def request(self, method: str, bucket: str, key: str = "", query: Mapping[str, str] | None = None,
                headers: Mapping[str, str] | None = None, now: float | None = None,
                amz_date: str | None = None) -> tuple[str, dict[str, str]]:
        """The URL and headers of a header-signed request with an unsigned payload, as botocore signs it with
        payload signing off. `headers` (Content-MD5, say) are sent and signed; `key` "" is the bucket."""
        amz_date = amz_date or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
        day = amz_date[:8]
        path = self._path_of(bucket, key)
        qs = "&".join(f"{k}={v}" for k, v in sorted((_quote(k), _quote(v)) for k, v in (query or {}).items()))
        signed = {k.lower(): " ".join(v.split()) for k, v in (headers or {}).items()}
        signed.update({"host": self._netloc, "x-amz-content-sha256": UNSIGNED, "x-amz-date": amz_date})
        if self.token:
            signed["x-amz-security-token"] = self.token
        names = sorted(signed)
        canonical = "\n".join((method, path, qs, *(f"{n}:{signed[n]}" for n in names), "", ";".join(names),
                               UNSIGNED))
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = f"{ALGORITHM}\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(self._signing_key(day), to_sign.encode(), hashlib.sha256).hexdigest()
        signed["authorization"] = (f"{ALGORITHM} Credential={self.access_key}/{scope}, "
                                   f"SignedHeaders={';'.join(names)}, Signature={signature}")
        url = f"{self._scheme}://{self._netloc}{path}" + (f"?{qs}" if qs else "")
        return url, signed
