"""omax: serve large language models from a Dask cluster behind an Ollama-compatible API.

The names notebook users need are importable from here; each is loaded on first use
so ``import omax`` (which every Dask plugin process does) stays light::

    from omax import Engine, ModelStore, GenerateRequest, Message, SamplingOptions
    om = omax.connect()  # a cluster from a notebook (omax.notebook)
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("omax")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0"

from omax import config as _config  # noqa: E402  (registers the omax defaults with dask.config)

_EXPORTS = {
    "Engine": "omax.engine.engine",
    "ModelStore": "omax.sharding.modelstore",
    "GenerateRequest": "omax.engine.request",
    "EmbedRequest": "omax.engine.request",
    "Message": "omax.engine.request",
    "SamplingOptions": "omax.engine.request",
    "ClusterRuntime": "omax.serve.cluster",
    "OmaxClient": "omax.cli.client",
    "connect": "omax.notebook",
}

__all__ = ["__version__", *_EXPORTS]
del _config


_SUBMODULES = {"batch"}  # ``omax.batch.generate`` without importing omax.batch first


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"omax.{name}")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'omax' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
