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
    ("Repository", "ops_log_async"): ("ops_log", "async-iterator"),
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
# icechunk 2.x names that helpers of issue 17 are adding (the coordinator removes these on
# merge, as each lands)
_ERRORS = (
    "icechunk 2.x's error classes and ErrorKind codes are not mirrored yet: aicechunk raises "
    "its own AicechunkError subclasses (RefNotFoundError, RepositoryNotFoundError, "
    "NodeNotFoundError, ...)"
)
_INSPECT = "no debugging dumps of repository files yet"
_STATS = "no chunk storage statistics yet"
_GRAPH = "no drawing of the history yet: Repository.ancestry lists it"
_UPDATES = (
    "Repository.ops_log() yields aicechunk's own Update records (kind, updated_at, "
    "backup_path), not exported under icechunk's names yet"
)

# icechunk's names aicechunk does not have yet, and why (shown when used): module-level
# names as they are, members of the facade classes as "Class.member".
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
    # icechunk 2.3.0's module-level names
    "AzureRefreshableCredential": _AZURE,
    "azure_anonymous_credentials": _AZURE,
    "azure_refreshable_credentials": _AZURE,
    "AlreadyExistsError": _ERRORS,
    "ErrorKind": _ERRORS,
    "InternalError": _ERRORS,
    "NotFoundError": _ERRORS,
    "SnapshotNotFoundError": _ERRORS,
    "AncestryGraph": "no drawing of the history yet: Repository.ancestry lists it",
    "Attribution": "requests carry no attribution labels",
    "user_agent": "requests carry aiobotocore's, gcloud-aio's or aiohttp's user agent",
    "shutdown_telemetry": "no OpenTelemetry tracing",
    "ChecksumAlgorithm": (
        "an S3 store's checksum_algorithm is a lower-case string: "
        "s3_store(checksum_algorithm='sha256')"
    ),
    "ManifestVirtualChunkLocationCompressionConfig": (
        "manifests hold virtual chunk locations uncompressed"
    ),
    "SpecVersion": "spec versions are plain ints (spec_version(), Repository.spec_version)",
    "StorageTimeoutSettings": _SETTINGS,
    "hf_storage": "there is no Hugging Face storage driver",
    "redirect_storage": (
        "there is no storage driver that follows HTTP redirects (http_storage reads a "
        "repository over HTTP)"
    ),
    "CommitMethod": "commit and amend are two calls, Session.commit and Session.amend",
    "Update": _UPDATES,
    "UpdateType": _UPDATES,
    # icechunk 2.3.0's members of the facade classes
    "Repository.ancestry_graph": _GRAPH,
    "Repository.attribution": "requests carry no attribution labels",
    "Repository.inspect_manifest": _INSPECT,
    "Repository.inspect_transaction_log": _INSPECT,
    "Repository.inspect_manifest_async": _INSPECT,
    "Repository.inspect_transaction_log_async": _INSPECT,
    "Repository.inspect_snapshot": _INSPECT,
    "Repository.inspect_snapshot_async": _INSPECT,
    "Repository.ancestry_graph_async": _GRAPH,
    "Repository.garbage_collect": _MAINTENANCE,
    "Repository.garbage_collect_async": _MAINTENANCE,
    "Repository.expire_snapshots": _MAINTENANCE,
    "Repository.expire_snapshots_async": _MAINTENANCE,
    "Repository.rewrite_manifests": _MAINTENANCE,
    "Repository.rewrite_manifests_async": _MAINTENANCE,
    "Repository.total_chunks_storage": _STATS,
    "Repository.total_chunks_storage_async": _STATS,
    "Repository.chunk_storage_stats": _STATS,
    "Repository.chunk_storage_stats_async": _STATS,
    "Repository.reopen_async": "reopening reads nothing and is not awaited: Repository.reopen",
    "Session.get_node_id_async": "node ids are internal to aicechunk: not given out yet",
    "IcechunkStore.set_partial_values": "zarr 3 stores write whole values: no partial writes",
    "IcechunkStore.sync_clear": "the store's synchronous protocols are not implemented yet",
    "Session.get_node_id": "node ids are internal to aicechunk: not given out yet",
    "Session.reindex_array": "no reindexing or shifting of an array's chunks yet",
    "Session.shift_array": "no reindexing or shifting of an array's chunks yet",
    "IcechunkStore.array_chunk_iterator": (
        "no columnar batches of chunk references yet: Session.chunk_coordinates lists them"
    ),
}
