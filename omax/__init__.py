"""omax: serve large language models from a Dask cluster behind an Ollama-compatible API."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("omax")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0"

from omax import config as _config  # noqa: E402  (registers the omax defaults with dask.config)

__all__ = ["__version__"]
del _config
