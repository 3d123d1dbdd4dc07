"""A GGUF file's layout, kept so the exact file can be rebuilt from the store.

Importing a GGUF keeps every tensor byte-identical in zarr chunks but drops the file
itself. A registry push must publish the very bytes that were pulled (a layer's name
is the sha256 of its content), so a model pulled from a registry also keeps:

- the *skeleton*: every byte of the file that is not tensor data, in file order (the
  header, the tensor table, alignment padding), and
- the *layout*: JSON ``{"digest", "size", "tensors": [[name, offset, nbytes], ...]}``,
  tensors sorted by offset.

``reassemble`` walks the layout, interleaving skeleton bytes with each tensor read back
through zarr, and yields the original file; the caller checks its digest.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QT

from omax.errors import DigestMismatch, InvalidRequest
from omax.sharding.blobs import BlobStore
from omax.sharding.importers.ggufheader import open_gguf
from omax.sharding.manifest import Manifest, canonical_json
from omax.sharding.zarrstore import open_group, read_tensor

SKELETON = "ollama/gguf.skeleton"
LAYOUT = "ollama/gguf.layout.json"


def split(path: Path, digest: str) -> tuple[bytes, bytes]:
    """``(skeleton, layout JSON)`` of the GGUF file at ``path`` whose sha256 is
    ``digest`` (the importer has already checked the file)."""
    file = open_gguf(path)
    tensors = []
    for t in file.tensors:
        block, block_bytes = gguf.GGML_QUANT_SIZES[QT(t.type_id)]
        tensors.append((t.name, t.offset, t.n_elements // block * block_bytes))
    tensors.sort(key=lambda x: x[1])
    pieces: list[bytes] = []
    pos = 0
    with open(path, "rb") as f:
        for _, offset, nbytes in tensors:
            f.seek(pos)
            pieces.append(f.read(offset - pos))
            pos = offset + nbytes
        f.seek(pos)
        pieces.append(f.read())
    layout = {"digest": digest, "size": file.size, "tensors": [list(t) for t in tensors]}
    return b"".join(pieces), canonical_json(layout)


def layout_of(blobs: BlobStore, manifest: Manifest) -> dict[str, Any]:
    """The stored layout of ``manifest``'s GGUF; InvalidRequest if it keeps none."""
    if LAYOUT not in manifest.files or SKELETON not in manifest.files:
        raise InvalidRequest("the model keeps no GGUF layout (it was not pulled from a registry)")
    return dict(json.loads(blobs.get(manifest.files[LAYOUT][0])))


def reassemble(blobs: BlobStore, manifest: Manifest) -> Iterator[bytes]:
    """The original GGUF file, piece by piece; DigestMismatch at the end if the pieces
    do not hash to the recorded digest (a damaged store), so nothing wrong is kept."""
    layout = layout_of(blobs, manifest)
    skeleton = blobs.get(manifest.files[SKELETON][0])
    group = open_group(blobs, manifest)
    h = hashlib.sha256()
    pos = skel = 0
    for name, offset, nbytes in layout["tensors"]:
        gap = skeleton[skel : skel + offset - pos]
        skel += offset - pos
        data = np.ascontiguousarray(read_tensor(blobs, manifest, name, group=group).data)
        raw = data.tobytes()
        if len(raw) != nbytes:
            raise DigestMismatch(f"tensor {name}: {len(raw)} bytes stored, {nbytes} in the GGUF")
        for piece in (gap, raw):
            h.update(piece)
            yield piece
        pos = offset + nbytes
    tail = skeleton[skel:]
    h.update(tail)
    yield tail
    if "sha256:" + h.hexdigest() != layout["digest"]:
        raise DigestMismatch(f"the rebuilt GGUF does not match {layout['digest']}")
