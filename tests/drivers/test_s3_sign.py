"""The lean path's SigV4 signatures and object URLs are botocore's, to the byte.

Two differential tests: ``Signer`` against botocore's ``S3SigV4Auth`` on the same
request (generated keys, ranges, conditions, bodies, session tokens, times), and the
URL and signature of what an aiobotocore client really prepares for GetObject,
HeadObject and PutObject (stopped before it is sent) against the lean path's.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aicechunk.drivers.base import validate_key
from aicechunk.drivers.s3_sign import Signer, amz_date
from aicechunk.drivers.s3_wire import Address, address_of
from aicechunk.errors import InvalidKey


def _valid(key: str) -> bool:
    try:
        validate_key(key)
    except InvalidKey:
        return False
    return True


#: every key the drivers accept: any Unicode but controls, surrogates and backslashes
KEYS = st.text(
    st.characters(exclude_categories=("Cs", "Cc"), exclude_characters="\\"), min_size=1
).filter(_valid)
PREFIXES = st.sampled_from(["", "repo", "a b/c+d", "ünï/~x"])
TOKENS = st.none() | st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1)
ETAGS = st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=40)
RANGES = st.none() | st.sampled_from(["bytes=0-99", "bytes=10-", "bytes=-5", "bytes=7-7"])
TIMES = st.integers(min_value=0, max_value=4_102_444_800)  # 1970 to 2100
SECRETS = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=60)


def _botocore(
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes,
    keys: tuple[str, str, str | None],
    region: str,
    date: str,
) -> dict[str, str]:
    # S3SigV4Auth.add_auth step by step, at the given time instead of now
    request = AWSRequest(method=method, url=url, data=body, headers=dict(headers))
    auth = S3SigV4Auth(Credentials(*keys), "s3", region)
    request.context["timestamp"] = date
    auth._modify_request_before_signing(request)
    canonical = auth.canonical_request(request)
    auth._inject_signature_to_request(
        request, auth.signature(auth.string_to_sign(request, canonical), request)
    )
    return {k.lower(): v for k, v in request.headers.items()}


@settings(max_examples=400, deadline=None)
@given(
    key=KEYS,
    prefix=PREFIXES,
    method=st.sampled_from(["GET", "HEAD", "PUT"]),
    byte_range=RANGES,
    condition=st.none() | st.just("*") | ETAGS,
    body=st.binary(max_size=300),
    token=TOKENS,
    secret=SECRETS,
    when=TIMES,
    scheme=st.sampled_from(["http", "https"]),
    region=st.sampled_from(["us-east-1", "eu-west-3", "auto", "weird-region-9"]),
)
def test_signature_is_botocores_s3sigv4auth(
    key: str,
    prefix: str,
    method: str,
    byte_range: str | None,
    condition: str | None,
    body: bytes,
    token: str | None,
    secret: str,
    when: int,
    scheme: str,
    region: str,
) -> None:
    address = Address(scheme, "bucket.s3.example.com:9000", "/bucket", region)
    path = address.path(f"{prefix}/{key}" if prefix else key)
    extra: dict[str, str] = {}
    if method == "GET" and byte_range:
        extra["Range"] = byte_range
    if method == "PUT" and condition is not None:
        extra["If-None-Match" if condition == "*" else "If-Match"] = condition
    else:
        body = b"" if method != "PUT" else body
    date = amz_date(when)
    ours = {"host": address.host, **{k.lower(): v for k, v in extra.items()}}
    payload = hashlib.sha256(body).hexdigest()
    Signer(region).sign(method, path, ours, payload, "AKIDEXAMPLE", secret, token, date)
    theirs = _botocore(
        method,
        f"{scheme}://{address.host}{path}",
        extra,
        body,
        ("AKIDEXAMPLE", secret, token),
        region,
        date,
    )
    assert ours["authorization"] == theirs["authorization"]
    for name in ("x-amz-date", "x-amz-content-sha256", "x-amz-security-token"):
        assert ours.get(name) == theirs.get(name), name


def test_signing_keys_are_cached_per_day_and_secret() -> None:
    signer = Signer("us-east-1")
    for day in range(20):
        for secret in ("a", "b"):
            headers = {"host": "h"}
            signer.sign("GET", "/k", headers, "x", "AK", secret, None, f"202601{day:02}T000000Z")
    assert len(signer._keys) <= 8


# --- what an aiobotocore client really prepares -----------------------------------------


def test_the_probed_address_is_read_from_botocores_request(
    botocore_client: tuple[asyncio.AbstractEventLoop, Any],
) -> None:
    from aicechunk.drivers.s3_wire import probe_address

    loop, client = botocore_client
    found = loop.run_until_complete(probe_address(client, "my-bucket"))
    assert found == Address("http", "127.0.0.1:9", "/my-bucket", "eu-central-1")
    auth = "AWS4-HMAC-SHA256 Credential=AK/20260101/us-west-2/s3/aws4_request, SignedHeaders=host"
    assert address_of("https://b.s3.amazonaws.com:443/aicechunk-probe", auth, {}) == Address(
        "https", "b.s3.amazonaws.com", "", "us-west-2"
    )
    assert address_of("http://[::1]:9000/x/b/aicechunk-probe", None, {}) == Address(
        "http", "[::1]:9000", "/x/b", None
    )
    # another signature scheme, another service, a query, S3 Express sessions: not lean
    assert address_of("https://h/aicechunk-probe", auth.replace("/s3/", "/s3express/"), {}) is None
    assert address_of("https://h/aicechunk-probe", "AWS4-ECDSA-P256-SHA256 x", {}) is None
    assert address_of("https://h/aicechunk-probe?x=1", None, {}) is None
    assert address_of("https://h/aicechunk-probe", auth, {"x-amz-s3session-token": "t"}) is None


@pytest.fixture(scope="module")
def botocore_client() -> Iterator[tuple[asyncio.AbstractEventLoop, Any]]:
    """(a loop, an aiobotocore client for an endpoint nothing listens on: every request
    is stopped before it is sent)."""
    from aiobotocore.session import get_session

    from aicechunk.drivers.s3_client import client_config

    loop = asyncio.new_event_loop()
    config = client_config(
        max_attempts=1,
        connect_timeout=1,
        read_timeout=1,
        max_pool_connections=1,
        path_style=True,
        anonymous=False,
    )
    context = get_session().create_client(
        "s3",
        endpoint_url="http://127.0.0.1:9",
        region_name="eu-central-1",
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="secret/key+example",
        aws_session_token="token/with+chars=",
        config=config,
    )
    client = loop.run_until_complete(context.__aenter__())
    yield loop, client
    loop.run_until_complete(context.__aexit__(None, None, None))
    loop.close()


async def _prepared(client: Any, operation: str, **params: Any) -> Any:
    seen: list[Any] = []

    def stop(request: Any, **_: Any) -> None:
        seen.append(request)
        raise asyncio.CancelledError

    name = {"get_object": "GetObject", "head_object": "HeadObject", "put_object": "PutObject"}
    event = f"before-send.s3.{name[operation]}"
    client.meta.events.register_first(event, stop, unique_id="test-stop")
    try:
        await getattr(client, operation)(**params)
    except asyncio.CancelledError:
        pass
    finally:
        client.meta.events.unregister(event, unique_id="test-stop")
    return seen[0]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    key=KEYS,
    operation=st.sampled_from(["get_object", "head_object", "put_object"]),
    byte_range=RANGES,
    condition=st.none() | st.just("*") | ETAGS,
    body=st.binary(max_size=200),
)
def test_url_and_signature_are_what_botocore_sends(
    botocore_client: tuple[asyncio.AbstractEventLoop, Any],
    key: str,
    operation: str,
    byte_range: str | None,
    condition: str | None,
    body: bytes,
) -> None:
    loop, client = botocore_client
    params: dict[str, Any] = {"Bucket": "my-bucket", "Key": key}
    if operation == "get_object" and byte_range:
        params["Range"] = byte_range
    if operation == "put_object":
        params["Body"] = body
        if condition == "*":
            params["IfNoneMatch"] = "*"
        elif condition is not None:
            params["IfMatch"] = condition
    request = loop.run_until_complete(_prepared(client, operation, **params))
    headers = {
        k.lower(): v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()
    }
    address = Address("http", "127.0.0.1:9", "/my-bucket", "eu-central-1")
    path = address.path(key)
    assert request.url == f"http://127.0.0.1:9{path}"
    # the headers botocore signed, signed again here at botocore's time
    signed = re.search(r"SignedHeaders=([^,]+)", headers["authorization"])
    assert signed is not None
    ours = {"host": address.host}
    ours.update({n: headers[n] for n in signed.group(1).split(";") if n != "host"})
    for name in ("x-amz-date", "x-amz-content-sha256", "x-amz-security-token"):
        del ours[name]  # the signer sets these itself
    Signer("eu-central-1").sign(
        request.method,
        path,
        ours,
        hashlib.sha256(body if operation == "put_object" else b"").hexdigest(),
        "AKIDEXAMPLE",
        "secret/key+example",
        "token/with+chars=",
        headers["x-amz-date"],
    )
    assert ours["authorization"] == headers["authorization"]
