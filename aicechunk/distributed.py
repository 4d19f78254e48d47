"""Public path of the Dask distributed integration (``aicechunk.integrations.distributed``)."""

from aicechunk.integrations.distributed import merge_sessions

__all__ = ["merge_sessions"]
