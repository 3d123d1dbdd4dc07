"""The omax pages on the Dask scheduler's dashboard: pure rows (``tables``), rates
(``history``), snapshots of the scheduler plugin (``snapshot``) and the Bokeh side
(``components``, ``pages``). ``omax.plugins.dashboard`` registers them."""
