"""Dask plugins: the scheduler's registry and placement, the workers' slots and stores."""
