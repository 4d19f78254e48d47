"""What the S3 drivers of one event loop with the same settings share (whatever their
bucket): the lean request path (``s3_wire``: one aiohttp session, a signer per bucket)
and an aiobotocore client, made only when first needed (listing, batch deletes,
requests the lean path hands back).

botocore's knowledge is asked once per process, bucket and environment: where the
bucket's objects are addressed and which region signs them (``probe_address``, kept in
``_ADDRESSES``; a change of the ``AWS_*`` variables that steer addressing, such as
``AWS_ENDPOINT_URL``, is probed anew by the next connection).
A repository opened again with static, anonymous or refreshable credentials then makes
no aiobotocore client at all unless it lists or deletes. The credentials are the ones
botocore would use: the driver's static or refreshable ones (one refreshing object for
both paths), or the environment's chain as the shared botocore session resolves it.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from aicechunk.drivers.http1 import Pool
from aicechunk.drivers.s3_client import (
    aws_environment,
    client_config,
    shared_session,
    tuned,
    user_agent,
)
from aicechunk.drivers.s3_credentials import refreshable
from aicechunk.drivers.s3_settings import S3Settings
from aicechunk.drivers.s3_wire import (
    Address,
    CredentialSource,
    S3Wire,
    aiohttp_wanted,
    lean_enabled,
    probe_address,
)
from aicechunk.errors import StorageError

__all__ = ["S3Connection"]

# (bucket, region, endpoint, path style, anonymous, AWS environment) -> where botocore
# addresses objects (settings left unset fall back to the environment)
_ADDRESSES: dict[tuple[object, ...], Address] = {}


def _address_key(settings: S3Settings, bucket: str) -> tuple[object, ...]:
    return (
        bucket,
        settings.region,
        settings.endpoint_url,
        settings.force_path_style,
        settings.credentials.anonymous,
        aws_environment(),
    )


class S3Connection:
    """An S3 connection of one loop: ``wire(bucket)``, the lean path to a bucket
    (``None`` when it is off or cannot serve these settings), and ``botocore()``, the
    aiobotocore client."""

    def __init__(self, settings: S3Settings, label: str) -> None:
        self.settings = settings
        self.label = label
        self._wires: dict[str, S3Wire | None] = {}
        self._session: Any = None  # http1's pool or aiohttp's session, shared by the wires
        self._source: CredentialSource | None = None
        self._lean = False  # whether the credentials allow the lean path at all
        self._probing: asyncio.Lock | None = None
        self._credentials: Any = None  # refreshable: one object for both paths
        self._client: asyncio.Future[tuple[Any, Any]] | None = None

    @classmethod
    async def open(cls, settings: S3Settings, label: str) -> S3Connection:
        """A connection, its lean path ready for the settings' bucket when it can be used."""
        made = cls(settings, label)
        try:
            if lean_enabled():
                made._lean, made._source = await made._credential_source()
                await made.wire(settings.bucket)
        except BaseException:
            await made.aclose()
            raise
        return made

    async def _credential_source(self) -> tuple[bool, CredentialSource | None]:
        # (usable, source): source None signs nothing (anonymous)
        creds = self.settings.credentials
        if creds.kind == "anonymous":
            return True, None
        if creds.kind == "static":
            token = creds.session_token
            keys = (
                str(creds.access_key_id),
                str(creds.secret_access_key),
                None if token is None else str(token),
            )
            return True, CredentialSource(keys)
        if creds.kind == "refreshable":
            self._credentials = await refreshable(creds)
            return True, CredentialSource(None, self._credentials)
        from aiobotocore.session import get_session

        found = await shared_session(get_session).get_credentials()
        if found is None:
            return False, None  # botocore's request says "no credentials", with advice
        return True, CredentialSource(None, found)

    async def wire(self, bucket: str) -> S3Wire | None:
        """The lean path to ``bucket``, ``None`` if it cannot serve it (requests then go
        through botocore); a wire that met a redirect is disabled and so ``None``."""
        try:
            found = self._wires[bucket]
        except KeyError:
            if self._probing is None:
                self._probing = asyncio.Lock()
            async with self._probing:
                if bucket not in self._wires:
                    self._wires[bucket] = await self._make_wire(bucket)
            found = self._wires[bucket]
        return found if found is not None and found.enabled else None

    async def _make_wire(self, bucket: str) -> S3Wire | None:
        settings = self.settings
        if not self._lean or bucket.endswith("--x-s3"):
            return None  # turned off or no credentials; S3 Express signs with sessions
        key = _address_key(settings, bucket)
        address = _ADDRESSES.get(key)
        if address is None:
            address = await probe_address(await self.botocore(), bucket)
            if address is None:
                return None
            _ADDRESSES[key] = address
        if (address.region is None) != (self._source is None):
            return None  # signed by botocore but not here, or the other way round
        if self._session is None and not aiohttp_wanted():
            self._session = Pool(
                limit=settings.max_concurrency,
                connect_timeout=settings.connect_timeout,
                read_timeout=settings.read_timeout,
                cafile=os.environ.get("AWS_CA_BUNDLE") or None,
            )
        elif self._session is None:
            import aiohttp

            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=settings.max_concurrency),
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    sock_connect=settings.connect_timeout,
                    sock_read=settings.read_timeout,
                ),
                auto_decompress=False,
            )
        return S3Wire(
            self._session,
            address,
            self._source,
            attempts=settings.max_attempts,
            user_agent=user_agent(),
        )

    async def botocore(self) -> Any:
        """The aiobotocore client, made on first use (once, however many ask)."""
        if self._client is None:
            self._client = asyncio.ensure_future(self._make_client())
        made = self._client
        try:
            client, _ = await asyncio.shield(made)
        except BaseException:
            if made.done() and self._client is made:
                self._client = None  # a failed creation is not kept
            raise
        return client

    async def _make_client(self) -> tuple[Any, Any]:
        from aiobotocore.session import get_session

        settings = self.settings
        creds = settings.credentials
        config = client_config(
            max_attempts=settings.max_attempts,
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            max_pool_connections=settings.max_concurrency,
            path_style=settings.force_path_style,
            anonymous=creds.anonymous,
        )
        kwargs: dict[str, Any] = {"config": config}
        if settings.region:
            kwargs["region_name"] = settings.region
        if settings.endpoint_url:
            kwargs["endpoint_url"] = str(settings.endpoint_url)
        if creds.kind == "static":
            # plain str for the client: the Secret wrappers only guard what is shown
            kwargs["aws_access_key_id"] = str(creds.access_key_id)
            kwargs["aws_secret_access_key"] = str(creds.secret_access_key)
            token = creds.session_token
            kwargs["aws_session_token"] = None if token is None else str(token)
        session = shared_session(get_session)
        if creds.kind == "refreshable":
            # a session of its own holds the refreshing credentials (botocore has no other
            # way to give a client some); it shares the loaded service models
            shared = session
            session = tuned(get_session())
            session.register_component("data_loader", shared.get_component("data_loader"))
            if self._credentials is None:
                self._credentials = await refreshable(creds)
            session._credentials = self._credentials
        try:
            context = session.create_client("s3", **kwargs)
            client = await context.__aenter__()
        except Exception as err:  # botocore's checks of region, endpoint, configuration
            raise StorageError(
                f"cannot create the S3 client: {type(err).__name__}: {err}", driver=self.label
            ) from err
        return client, context

    async def aclose(self) -> None:
        """Close the aiohttp session and the aiobotocore client (if one was made)."""
        session, self._session = self._session, None
        made, self._client = self._client, None
        self._wires.clear()
        if isinstance(session, Pool):
            await session.aclose()
        elif session is not None:
            await session.close()
        if made is None:
            return
        if not made.done():
            made.cancel()  # still being made: nothing open to close yet
        elif not made.cancelled() and made.exception() is None:
            _, context = made.result()
            await context.__aexit__(None, None, None)
