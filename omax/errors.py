"""The omax exception tree. Every edge (HTTP, CLI) translates these once.

OmaxError                      base; message is safe to show to a user
├── InvalidRequest             bad input from a client (HTTP 400)
├── ModelNotFound              unknown model name (HTTP 404)
├── BlobNotFound               unknown blob digest (HTTP 404)
├── DigestMismatch             bytes do not hash to their name (HTTP 400)
├── ServerBusy                 a bounded queue is full (HTTP 503)
├── Cancelled                  the client went away (HTTP 499)
├── PlacementRefused           no slot can hold the model (HTTP 503), says why
├── ImportFailed               a model file cannot be imported; names file and reason
├── StoreError                 the blob store or catalog failed (HTTP 500)
│   └── CatalogConflict        a compare-and-swap lost; retry with fresh state
├── EngineError                a recoverable failure inside one request (HTTP 500)
│   └── EngineDead             the actor or its worker is gone; retry elsewhere
├── ConfigError                an invalid configuration value; names key and value
└── native.BuildError          the native decode step did not compile (omax.engine.native)
"""

from __future__ import annotations


class OmaxError(Exception):
    """Base class; ``str(err)`` is a message fit for a user."""

    status = 500


class InvalidRequest(OmaxError):
    status = 400


class ModelNotFound(OmaxError):
    status = 404

    def __init__(self, name: str) -> None:
        super().__init__(f"model '{name}' not found")
        self.name = name


class BlobNotFound(OmaxError):
    status = 404


class DigestMismatch(OmaxError):
    status = 400


class ServerBusy(OmaxError):
    status = 503

    def __init__(
        self, message: str = "server busy, please try again.  maximum pending requests exceeded"
    ) -> None:
        super().__init__(message)


class Cancelled(OmaxError):
    status = 499


class PlacementRefused(OmaxError):
    status = 503


class ImportFailed(OmaxError):
    status = 400


class StoreError(OmaxError):
    status = 500


class CatalogConflict(StoreError):
    pass


class EngineError(OmaxError):
    status = 500


class EngineDead(EngineError):
    pass


class ConfigError(OmaxError):
    status = 500
