"""Public path of the xarray integration (``aicechunk.integrations.xarray``)."""

from aicechunk.integrations.xarray import to_icechunk, to_icechunk_async

__all__ = ["to_icechunk", "to_icechunk_async"]
