"""Integrations on top of the core: Dask, xarray and Dask distributed. The core never
imports them; the public modules ``aicechunk.dask``, ``aicechunk.xarray`` and
``aicechunk.distributed`` re-export them."""
