"""The omax exception tree. Every edge (HTTP, CLI) translates these once.

OmaxError                      base; message is safe to show to a user
├── InvalidRequest             bad input from a client (HTTP 400)
├── ModelNotFound              unknown model name (HTTP 404)
├── BlobNotFound               unknown blob digest (HTTP 404)
├── DigestMismatch             bytes do not hash to their name (HTTP 400)
├── ServerBusy                 a bounded queue is full (HTTP 503)
├── PlacementRefused           no slot can hold the model (HTTP 503), says why
├── Unavailable                the scheduler is unreachable; retry later (HTTP 503)
├── DeadlineExceeded           a remote wait passed its deadline (HTTP 504), names it
├── ImportFailed               a model file cannot be imported; names file and reason
├── StoreError                 the blob store or catalog failed (HTTP 500)
│   └── CatalogConflict        a compare-and-swap lost; retry with fresh state
├── EngineError                a recoverable failure inside one request (HTTP 500)
│   └── EngineDead             the actor or its worker is gone; retry elsewhere
├── ConfigError                an invalid configuration value; names key and value
└── native.BuildError          the native decode step did not compile (omax.engine.native)

An error crosses a process boundary (a Dask RPC answer, a streamed chunk) in one
form, ``to_wire(exc)``: ``{"error": message, "status": int, "type": class name}``.
``from_wire`` rebuilds the same class from omax's tree, with its status; a type it
does not know (a newer peer) comes back as ``OmaxError`` with the status it carried.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class OmaxError(Exception):
    """Base class; ``str(err)`` is a message fit for a user."""

    status = 500


class InvalidRequest(OmaxError):
    status = 400


class ModelNotFound(OmaxError):
    status = 404
    name = ""  # the name asked for; empty on one rebuilt by from_wire

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


class PlacementRefused(OmaxError):
    status = 503


class Unavailable(OmaxError):
    status = 503


class DeadlineExceeded(OmaxError):
    status = 504


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


def to_wire(exc: BaseException) -> dict[str, Any]:
    """``exc`` as msgpack carries it: ``{"error", "status", "type"}``.

    An exception outside omax's tree travels as a plain ``OmaxError`` (status 500).
    """
    if isinstance(exc, OmaxError):
        kind = type(exc).__name__
        status = int(getattr(exc, "status", 500))
    else:
        kind, status = OmaxError.__name__, 500
    return {"error": str(exc) or type(exc).__name__, "status": status, "type": kind}


def from_wire(wire: Mapping[str, Any] | str, default: type[OmaxError] = OmaxError) -> OmaxError:
    """The exception ``to_wire`` described. A bare message (or a dict without a
    ``type``) becomes a ``default``; a dict's ``status`` overrides the class's."""
    if isinstance(wire, str):
        wire = {"error": wire}
    cls = _classes().get(str(wire.get("type", "")), default)
    err = cls.__new__(cls)  # not cls(...): ModelNotFound and ServerBusy shape their message
    Exception.__init__(err, str(wire.get("error", "")))
    if "status" in wire and int(wire["status"]) != cls.status:
        err.status = int(wire["status"])
    return err


def is_wire_error(reply: Any) -> bool:
    """Whether an RPC answer carries an error (``to_wire``'s form, maybe beside data)."""
    return isinstance(reply, Mapping) and "error" in reply


def _classes() -> dict[str, type[OmaxError]]:
    """Every class of the tree by name, subclasses defined elsewhere included."""
    found: dict[str, type[OmaxError]] = {}
    todo: list[type[OmaxError]] = [OmaxError]
    while todo:
        cls = todo.pop()
        found.setdefault(cls.__name__, cls)
        todo.extend(cls.__subclasses__())
    return found
