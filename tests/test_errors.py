"""The error wire format: ``to_wire`` / ``from_wire`` keep an error's type and status."""

import pickle

import msgpack
import pytest

from omax import errors
from omax.errors import (
    BlobNotFound,
    CatalogConflict,
    EngineDead,
    EngineError,
    ModelNotFound,
    OmaxError,
    PlacementRefused,
    ServerBusy,
    from_wire,
    is_wire_error,
    to_wire,
)

TREE = [
    errors.InvalidRequest("bad input"),
    ModelNotFound("tiny:latest"),
    BlobNotFound("no blob"),
    errors.DigestMismatch("wrong bytes"),
    ServerBusy(),
    PlacementRefused("needs 2 GiB"),
    errors.Unavailable("scheduler unreachable"),
    errors.DeadlineExceeded("omax_ensure took too long"),
    errors.ImportFailed("bad file"),
    errors.StoreError("store down"),
    CatalogConflict("lost a race"),
    EngineError("step failed"),
    EngineDead("actor gone"),
    errors.ConfigError("bad key"),
]


@pytest.mark.parametrize("exc", TREE, ids=lambda e: type(e).__name__)
def test_round_trip_keeps_type_message_and_status(exc):
    wire = msgpack.unpackb(msgpack.packb(to_wire(exc)))  # as Dask's RPC carries it
    back = from_wire(wire)
    assert type(back) is type(exc)
    assert str(back) == str(exc)
    assert back.status == exc.status
    assert to_wire(back) == to_wire(exc)


def test_wire_form_is_the_error_and_status_an_answer_always_had():
    assert to_wire(ModelNotFound("x")) == {
        "error": "model 'x' not found",
        "status": 404,
        "type": "ModelNotFound",
    }
    assert is_wire_error(to_wire(EngineDead("gone")))
    assert is_wire_error({"digest": "d", "complete": False, **to_wire(OmaxError("no"))})
    assert not is_wire_error({"actors": []}) and not is_wire_error(True)


def test_a_status_set_on_an_instance_travels():
    err = OmaxError("teapot")
    err.status = 418
    back = from_wire(to_wire(err))
    assert type(back) is OmaxError and back.status == 418


def test_foreign_exceptions_travel_as_omax_errors():
    wire = to_wire(ValueError("boom"))
    assert wire == {"error": "boom", "status": 500, "type": "OmaxError"}
    assert to_wire(KeyError())["error"] == "KeyError"  # never an empty message


def test_unknown_type_keeps_its_status_and_bare_messages_take_the_default():
    back = from_wire({"error": "from a newer peer", "status": 503, "type": "NotYetInvented"})
    assert type(back) is OmaxError and back.status == 503 and str(back) == "from a newer peer"
    assert type(from_wire("engine step failed", EngineError)) is EngineError
    assert type(from_wire({"error": "blob gone"}, BlobNotFound)) is BlobNotFound


def test_subclasses_defined_outside_the_tree_module_are_found():
    class LateError(EngineError):
        status = 502

    back = from_wire(to_wire(LateError("late")))
    assert type(back) is LateError and back.status == 502


def test_rebuilt_errors_pickle_and_raise_like_the_originals():
    back = from_wire(to_wire(ModelNotFound("m")))
    assert back.name == ""  # the class default: the message says which model
    with pytest.raises(ModelNotFound, match="model 'm' not found"):
        raise back
    again = pickle.loads(pickle.dumps(from_wire(to_wire(PlacementRefused("no room")))))
    assert type(again) is PlacementRefused and str(again) == "no room"
