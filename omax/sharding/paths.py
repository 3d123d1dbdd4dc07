"""Checks on file paths that come from a request or from inside an uploaded file.

``/api/create`` may name a server path (``from``) only under ``omax.store.import-roots``;
an uploaded file's name (``files``) and the shard names of a safetensors index must
stay inside the folder they are joined to. A ``from`` path is resolved (``..`` and
symlinks followed) before it is compared with the roots; names inside a model are
checked lexically (``inside``). A refused path is
an ``InvalidRequest`` (400) that does not say whether the path exists.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from omax.errors import InvalidRequest


def is_within(path: Path, folder: Path) -> bool:
    """Whether ``path``, resolved, is ``folder`` (resolved) or below it."""
    return path.resolve().is_relative_to(folder.resolve())


def under_roots(source: str, roots: Sequence[str]) -> Path:
    """``source`` resolved, if it lies under one of ``roots``; InvalidRequest if not
    (with no roots, every server path is refused)."""
    path = Path(source).expanduser()
    if not roots:
        raise InvalidRequest(
            f"creating from a server path ({source!r}) is disabled: upload the files "
            "(the ollama client and `omax create` do), or list a folder in "
            "omax.store.import-roots"
        )
    if not any(is_within(path, Path(root).expanduser()) for root in roots):
        raise InvalidRequest(f"{source!r} is not under an import root (omax.store.import-roots)")
    return path.resolve()


def check_relative_name(name: str) -> str:
    """``name`` if it is a plain relative file name (``a.gguf``, ``1_Pooling/config.json``):
    not empty, not absolute, no ``..``, ``.`` or empty parts, no NUL or backslash."""
    parts = PurePosixPath(name).parts
    if (
        not name
        or "\0" in name
        or "\\" in name
        or name.startswith("/")
        or any(p in ("", ".", "..") for p in name.split("/"))
        or not parts
    ):
        raise InvalidRequest(
            f"invalid file name {name!r}: must be a relative path inside the model"
        )
    return name


def inside(folder: Path, name: str, what: str) -> Path:
    """``folder / name`` if it names a file inside ``folder``; InvalidRequest naming
    ``what`` (the file that named it) otherwise.

    Lexical (``..`` and absolute names), not through symlinks: a Hugging Face cache
    folder links every file to a blob outside it, and an upload has no symlinks
    (its files are hard links or copies of verified blobs)."""
    path = folder / name
    if Path(name).is_absolute() or not os.path.normpath(path).startswith(
        os.path.normpath(folder) + os.sep
    ):
        raise InvalidRequest(f"{what}: {name!r} points outside the model folder")
    return path
