"""Importing from local files: a path of any format omax reads, or uploaded blobs.

``import_file`` tells a GGUF file, a safetensors file and a Hugging Face folder apart
and hands the path to its importer. ``import_uploaded`` imports blobs a client
uploaded (Ollama's ``/api/create`` with ``files``): each is re-hashed, then they are
laid out as a folder under their file names and imported like one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from omax.errors import BlobNotFound, ImportFailed, InvalidRequest
from omax.sharding.blobs import BlobStore
from omax.sharding.importers.common import BlobWriter
from omax.sharding.importers.gguf import import_gguf, is_gguf
from omax.sharding.importers.hf import import_safetensors
from omax.sharding.manifest import Manifest
from omax.sharding.paths import check_relative_name


def import_file(writer: BlobWriter, path: Path) -> Manifest:
    """Import a GGUF file, a safetensors file, or a Hugging Face folder (auto-detected)."""
    if path.is_dir():
        return import_safetensors(writer, path)
    if not path.exists():
        raise ImportFailed(f"{path}: no such file or directory")
    if path.suffix == ".gguf" or is_gguf(path):
        return import_gguf(writer, path)
    if path.suffix == ".safetensors":
        return import_safetensors(writer, path)
    raise ImportFailed(f"{path}: not a GGUF file, safetensors file or model folder")


def import_uploaded(writer: BlobWriter, files: Mapping[str, str]) -> Manifest:
    """Import the blobs of ``writer``'s store named by ``files`` (file name -> digest):
    one ``.gguf``, or the files of a Hugging Face folder."""
    blobs = writer.blobs
    for fname, digest in files.items():
        check_relative_name(fname)
        # re-hashed, not trusted for existing: the importer reads them whole anyway
        if not blobs.check(digest):
            raise BlobNotFound(f"blob {digest} for {fname} not found; upload it first")
    with _materialize(blobs, files) as folder:
        ggufs = [f for f in files if f.endswith(".gguf")]
        if len(ggufs) == 1 and not any(f.endswith(".safetensors") for f in files):
            return import_file(writer, folder / ggufs[0])
        if ggufs:
            raise InvalidRequest("create from files takes one .gguf or safetensors files")
        return import_file(writer, folder)


@contextlib.contextmanager
def _materialize(blobs: BlobStore, files: Mapping[str, str]) -> Iterator[Path]:
    """The uploaded blobs as a local folder under their file names (hard links on a
    local store, verified copies otherwise)."""
    tmp = Path(tempfile.mkdtemp(prefix="omax-create-"))
    try:
        for fname, digest in files.items():
            dest = tmp / fname
            dest.parent.mkdir(parents=True, exist_ok=True)
            src = blobs.path(digest)
            if blobs._local:
                try:
                    os.link(src, dest)
                    continue
                except OSError:
                    pass
            with blobs.open(digest) as fin, open(dest, "wb") as fout:
                shutil.copyfileobj(fin, fout, 8 << 20)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
