"""Durable writes on a local filesystem: what a power loss cannot leave half done.

A rename is atomic, but without ``fsync`` a crash can still leave the new name
pointing at a file whose data never reached the disk (empty or cut short), or lose
the rename itself. So a file is written under a temporary name, fsynced, renamed
into place, and then its directory is fsynced so the new entry is on disk too.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

TMP_SUFFIX = ".tmp"


def fsync_dir(path: str | Path) -> None:
    """Flush a directory's entries (a rename or create in it) to disk."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # a platform that cannot open directories: nothing to do
        return
    try:
        with contextlib.suppress(OSError):  # some filesystems refuse fsync on a directory
            os.fsync(fd)
    finally:
        os.close(fd)


def makedirs(path: str | Path) -> None:
    """``mkdir -p`` whose new directories survive a crash (each parent fsynced)."""
    path = Path(path)
    if path.is_dir():
        return
    makedirs(path.parent)
    with contextlib.suppress(FileExistsError):
        path.mkdir()
    fsync_dir(path.parent)


def write_atomic(path: str | Path, data: bytes, sync: bool = True) -> None:
    """Replace ``path`` with ``data`` so that, after any crash, it holds the old
    bytes or the new ones, whole: temporary file, fsync, rename, directory fsync.
    ``sync=False`` skips both fsyncs: readers still never see a mix, but a crash may
    leave the old file or a torn one (for hints that are rewritten often).

    The temporary file is a hidden sibling (``.<name>.<random>.tmp``), so a reader
    listing the directory can tell it from a real entry.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}{TMP_SUFFIX}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if sync:
        fsync_dir(path.parent)


def is_temporary(name: str) -> bool:
    """Whether a file name is one ``write_atomic`` writes before its rename."""
    return name.startswith(".") and name.endswith(TMP_SUFFIX)
