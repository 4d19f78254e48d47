"""Where icechunk spells a name differently from aicechunk's core: the one table.

Everything else in ``aicechunk.sync`` is generated from the async core under the core's
own names (an async method ``m`` becomes a blocking ``m`` and an awaitable ``m_async``; an
async iterator method ``m`` a plain iterator ``m`` and an async ``async_m``, as icechunk's
``ancestry``/``async_ancestry``). An entry here is used only while the core lacks the
icechunk name itself, so a core that grows the name takes over without an edit here.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["MEMBER_SPELLINGS", "MODULE_SPELLINGS", "NOT_YET", "Kind"]

Kind = Literal["as-core", "async-iterator", "keys"]

# (facade class, icechunk's name) -> (core attribute, kind). "async-iterator": icechunk's
# name is the async iterator (icechunk's ``Session.chunk_coordinates`` has no sync form);
# "keys": icechunk's is the set of the keys of the core's mapping.
MEMBER_SPELLINGS: dict[tuple[str, str], tuple[str, Kind]] = {
    ("Session", "chunk_coordinates"): ("chunk_coords", "async-iterator"),
    ("Repository", "authorized_virtual_container_prefixes"): (
        "authorized_virtual_containers",
        "keys",
    ),
}

# icechunk's module-level name -> aicechunk's core name.
MODULE_SPELLINGS: dict[str, str] = {
    "IcechunkError": "AicechunkError",
    "ConflictType": "ConflictKind",
}

_AZURE = "there is no Azure driver yet (drivers: memory, local, s3, gcs, http)"
_TYPED_CREDENTIALS = (
    "credentials are given as plain values to the constructors (s3_credentials, "
    "gcs_credentials, containers_credentials), not as icechunk's typed classes"
)
_SETTINGS = (
    "each driver has one settings dataclass (docs/storage.md) instead of icechunk's "
    "StorageSettings; pass them through the storage constructors"
)
_MANIFESTS = "manifests are written whole and unsplit: no manifest splitting or preloading yet"
_MAINTENANCE = "no garbage collection, expiry or manifest rewriting yet"

# icechunk's module-level names aicechunk does not have yet, and why (shown when used).
NOT_YET: dict[str, str] = {
    "AnyAzureCredential": _AZURE,
    "AnyAzureStaticCredential": _AZURE,
    "AzureCredentials": _AZURE,
    "AzureStaticCredentials": _AZURE,
    "azure_credentials": _AZURE,
    "azure_from_env_credentials": _AZURE,
    "azure_static_credentials": _AZURE,
    "azure_storage": _AZURE,
    "AnyCredential": _TYPED_CREDENTIALS,
    "AnyGcsCredential": _TYPED_CREDENTIALS,
    "AnyGcsStaticCredential": _TYPED_CREDENTIALS,
    "AnyS3Credential": _TYPED_CREDENTIALS,
    "Credentials": _TYPED_CREDENTIALS,
    "GcsCredentials": _TYPED_CREDENTIALS,
    "GcsStaticCredentials": _TYPED_CREDENTIALS,
    "S3StaticCredentials": _TYPED_CREDENTIALS,
    "s3_static_credentials": _TYPED_CREDENTIALS,
    "s3_anonymous_credentials": _TYPED_CREDENTIALS,
    "s3_from_env_credentials": _TYPED_CREDENTIALS,
    "gcs_static_credentials": _TYPED_CREDENTIALS,
    "gcs_from_env_credentials": _TYPED_CREDENTIALS,
    "AnyObjectStoreConfig": "virtual chunk stores are made by s3_store, gcs_store, ... only",
    "ObjectStoreConfig": "virtual chunk stores are made by s3_store, gcs_store, ... only",
    "S3Options": "S3 settings are s3_storage's and s3_store's keyword arguments",
    "StorageSettings": _SETTINGS,
    "StorageConcurrencySettings": _SETTINGS,
    "StorageRetriesSettings": _SETTINGS,
    "CompressionAlgorithm": "manifests and snapshots are compressed with zstd at one level",
    "CompressionConfig": "manifests and snapshots are compressed with zstd at one level",
    "ManifestConfig": _MANIFESTS,
    "ManifestPreloadCondition": _MANIFESTS,
    "ManifestPreloadConfig": _MANIFESTS,
    "ManifestSplitCondition": _MANIFESTS,
    "ManifestSplitDimCondition": _MANIFESTS,
    "ManifestSplittingConfig": _MANIFESTS,
    "GCSummary": _MAINTENANCE,
}
