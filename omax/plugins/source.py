"""Where a ModelActor's weights come from on a worker: its local replica.

``local_source(digest)`` runs inside a worker process: it finds the omax worker
plugin's local store, checks the replica is complete and returns what
``omax.sharding.spec_source.store_source`` reads from it (the spec and a lazy tensor
stream). A blob that does not verify ends the load with DigestMismatch after the
worker plugin quarantined the replica's bad blobs (``damaged``), so the scheduler
fetches them again and retries the load instead of trusting the replica.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from omax.engine.spec import ModelSpec
from omax.errors import DigestMismatch, EngineError
from omax.sharding.spec_source import store_source
from omax.sharding.tensors import RawTensor


def local_source(digest: str) -> tuple[ModelSpec, Iterator[RawTensor]]:
    """The model ``digest`` from this worker's complete local replica."""
    from distributed import get_worker

    from omax.plugins.worker import plugin_of

    plugin = plugin_of(get_worker())
    replicas = plugin.replicas
    assert replicas is not None
    if not replicas.is_complete(digest):
        raise EngineError(f"this worker holds no complete replica of {digest}")
    try:
        spec, tensors = store_source(replicas.store, digest)
    except DigestMismatch as err:
        raise plugin.damaged(digest, err) from err
    return spec, _checked(tensors, lambda err: plugin.damaged(digest, err))


def _checked(
    tensors: Iterator[RawTensor], damaged: Callable[[DigestMismatch], DigestMismatch]
) -> Iterator[RawTensor]:
    """``tensors``, with a blob that fails verification answered by ``damaged``."""
    try:
        yield from tensors
    except DigestMismatch as err:
        raise damaged(err) from err
