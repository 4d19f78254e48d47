"""Public path of the Dask integration (``aicechunk.integrations.dask``)."""

from aicechunk.integrations.dask import store_dask, store_dask_async

__all__ = ["store_dask", "store_dask_async"]
