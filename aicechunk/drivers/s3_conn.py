"""What the S3 drivers of one event loop with the same settings share: the lean request
path (``s3_wire``: an aiohttp session, signed requests) and an aiobotocore client, made
only when first needed (listing, batch deletes, requests the lean path hands back).

botocore's knowledge is asked once per process and bucket: where the bucket's objects
are addressed and which region signs them (``probe_address``, kept in ``_ADDRESSES``).
A repository opened again with static, anonymous or refreshable credentials then makes
no aiobotocore client at all unless it lists or deletes. The credentials are the ones
botocore would use: the driver's static or refreshable ones (one refreshing object for
both paths), or the environment's chain as the shared botocore session resolves it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aicechunk.drivers.s3_client import client_config, shared_session, tuned, user_agent
from aicechunk.drivers.s3_credentials import refreshable
from aicechunk.drivers.s3_settings import S3Settings
from aicechunk.drivers.s3_wire import (
    Address,
    CredentialSource,
    S3Wire,
    lean_enabled,
    probe_address,
)
from aicechunk.errors import StorageError

__all__ = ["S3Connection"]

# (bucket, region, endpoint, path style, anonymous) -> where botocore addresses objects
_ADDRESSES: dict[tuple[object, ...], Address] = {}


def _address_key(settings: S3Settings) -> tuple[object, ...]:
    return (
        settings.bucket,
        settings.region,
        settings.endpoint_url,
        settings.force_path_style,
        settings.credentials.anonymous,
    )


class S3Connection:
    """An S3 connection of one loop: ``wire`` (``None`` when the lean path is off or
    cannot serve these settings) and ``botocore()``, the aiobotocore client."""

    def __init__(self, settings: S3Settings, label: str) -> None:
        self.settings = settings
        self.label = label
        self.wire: S3Wire | None = None
        self._credentials: Any = None  # refreshable: one object for both paths
        self._client: asyncio.Future[tuple[Any, Any]] | None = None

    @classmethod
    async def open(cls, settings: S3Settings, label: str) -> S3Connection:
        """A connection, its lean path ready when it can be used."""
        made = cls(settings, label)
        try:
            await made._open_wire()
        except BaseException:
            await made.aclose()
            raise
        return made

    async def _source(self) -> tuple[bool, CredentialSource | None]:
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

    async def _open_wire(self) -> None:
        settings = self.settings
        if not lean_enabled() or settings.bucket.endswith("--x-s3"):
            return  # turned off; S3 Express directory buckets sign with sessions
        usable, source = await self._source()
        if not usable:
            return
        key = _address_key(settings)
        address = _ADDRESSES.get(key)
        if address is None:
            address = await probe_address(await self.botocore(), settings.bucket)
            if address is None:
                return
            _ADDRESSES[key] = address
        if (address.region is None) != (source is None):
            return  # signed by botocore but not here, or the other way round
        import aiohttp

        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=settings.max_concurrency),
            timeout=aiohttp.ClientTimeout(
                total=None,
                sock_connect=settings.connect_timeout,
                sock_read=settings.read_timeout,
            ),
            auto_decompress=False,
        )
        self.wire = S3Wire(
            session,
            address,
            source,
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
        wire, self.wire = self.wire, None
        made, self._client = self._client, None
        if wire is not None:
            await wire.session.close()
        if made is None:
            return
        if not made.done():
            made.cancel()  # still being made: nothing open to close yet
        elif not made.cancelled() and made.exception() is None:
            _, context = made.result()
            await context.__aexit__(None, None, None)
