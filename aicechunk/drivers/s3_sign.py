"""AWS Signature Version 4 for the S3 driver's lean requests (``s3_wire``).

botocore signs a request by building an ``AWSRequest``, splitting its URL again, copying
its headers into a case-insensitive map twice and deriving the signing key from the
secret four HMACs deep, every time. The requests of the lean path are few and simple
(no query string, a handful of headers, the path already encoded), so their signature
is computed here directly, with the signing key cached per secret, date and region.

What is signed is what S3 expects and botocore's ``S3SigV4Auth`` produces for the same
request (``tests/drivers/test_s3_sign.py`` compares the two):

- the canonical URI is the request path exactly as sent: S3 neither normalizes nor
  encodes it a second time;
- every header sent except ``User-Agent``, names lower-cased and sorted, values with
  their runs of white space folded (``Host`` included, as sent);
- ``x-amz-content-sha256`` is the hex SHA-256 of the body (botocore sends the same when
  no checksum header goes with the body, which is the driver's case: over HTTPS too);
- ``x-amz-date`` is the time of signing, ``x-amz-security-token`` the session token if
  the credentials have one.
"""

from __future__ import annotations

import hashlib
import hmac
import time

__all__ = ["EMPTY_SHA256", "Signer", "amz_date"]

#: hex SHA-256 of no bytes (the payload hash of GET and HEAD)
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

_ALGORITHM = "AWS4-HMAC-SHA256"
#: headers botocore leaves out of the signature that the lean path may send
_UNSIGNED = frozenset({"user-agent"})


def amz_date(now: float | None = None) -> str:
    """``x-amz-date`` for the time ``now`` (seconds since the epoch; default: now)."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))


def _fold(value: str) -> str:
    # SigV4's Trimall: no white space at either end, every run of it one space
    return " ".join(value.split())


class Signer:
    """Signs S3 requests for one region (``service`` is ``s3``).

    The signing key depends on the secret, the day and the region only; it is derived
    once per day and secret (rotated credentials get theirs on first use).
    """

    def __init__(self, region: str, service: str = "s3") -> None:
        self.region = region
        self.service = service
        self._keys: dict[tuple[str, str], bytes] = {}

    def _signing_key(self, secret: str, day: str) -> bytes:
        found = self._keys.get((secret, day))
        if found is None:
            key = hmac.digest(f"AWS4{secret}".encode(), day.encode(), "sha256")
            for part in (self.region, self.service, "aws4_request"):
                key = hmac.digest(key, part.encode(), "sha256")
            if len(self._keys) >= 8:  # days and rotated secrets: keep a few
                self._keys.clear()
            found = self._keys[(secret, day)] = key
        return found

    def sign(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        payload_hash: str,
        access_key: str,
        secret_key: str,
        token: str | None,
        date: str,
    ) -> None:
        """Add ``x-amz-date``, ``x-amz-content-sha256``, ``x-amz-security-token`` (with a
        token) and ``Authorization`` to ``headers`` (lower-case names, ``host`` among
        them) for a request of ``method`` to the encoded ``path`` with no query."""
        headers["x-amz-date"] = date
        headers["x-amz-content-sha256"] = payload_hash
        if token:
            headers["x-amz-security-token"] = token
        names = sorted(name for name in headers if name not in _UNSIGNED)
        signed = ";".join(names)
        canonical = "\n".join(
            (
                method,
                path,
                "",
                "".join(f"{name}:{_fold(headers[name])}\n" for name in names),
                signed,
                payload_hash,
            )
        )
        day = date[:8]
        scope = f"{day}/{self.region}/{self.service}/aws4_request"
        to_sign = (
            f"{_ALGORITHM}\n{date}\n{scope}\n"
            f"{hashlib.sha256(canonical.encode('utf-8')).hexdigest()}"
        )
        signature = hmac.new(
            self._signing_key(secret_key, day), to_sign.encode("utf-8"), hashlib.sha256
        ).hexdigest()
        headers["authorization"] = (
            f"{_ALGORITHM} Credential={access_key}/{scope}, SignedHeaders={signed}, "
            f"Signature={signature}"
        )
