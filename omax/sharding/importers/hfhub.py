"""Import ``hf.co/<user>/<repo>[:<quant>]`` (or ``huggingface.co/...``) from the
Hugging Face hub through ``huggingface_hub``.

A repo holding ``.gguf`` files is a GGUF repo: the tag picks one file by its
quantisation label (``Q4_K_M``, case-insensitive, matched as a whole label so ``Q4_K``
is not ``Q4_K_M``); with no tag, ``DEFAULT_QUANTS`` decides, as Ollama does. Any other
repo is a Hugging Face model folder: its config, tokenizer and ``*.safetensors`` files
are downloaded and imported as a folder. Downloads go through ``hf_hub_download`` /
``snapshot_download`` into the hub cache, so ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE``
behave as everywhere else (both are read at call time, not at import time). Offline, or
with the hub unreachable, the repo's files are listed from the cached snapshot.

Every failure is ``ImportFailed`` naming the reference and the reason.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from omax.errors import ImportFailed
from omax.sharding.importers.common import BlobWriter
from omax.sharding.importers.gguf import import_gguf
from omax.sharding.importers.hf import import_safetensors
from omax.sharding.manifest import Manifest

PREFIXES = ("hf.co/", "huggingface.co/")
REVISION = "main"
# Ollama's default for hf.co GGUF repos is Q4_K_M; the rest are sensible fallbacks.
DEFAULT_QUANTS = ("Q4_K_M", "Q4_0", "Q4_1", "Q5_K_M", "Q6_K", "Q8_0", "F16", "BF16", "F32")
# Files a safetensors repo needs; ONNX/OpenVINO exports and pickles are not.
FOLDER_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken"]
FOLDER_IGNORE = ["onnx/*", "openvino/*", "*.onnx", "*.bin", "*.pt", "*.h5", "*.msgpack"]
_QUANT_RE = re.compile(
    r"(?<![A-Za-z0-9])(I?Q\d+(?:_[A-Z0-9]+)*|BF16|F16|F32)(?![A-Za-z0-9])", re.IGNORECASE
)
_SPLIT_RE = re.compile(r"-\d{5}-of-\d{5}\.gguf$")


@dataclass(frozen=True)
class HubRef:
    repo_id: str  # user/repo
    quant: str | None  # None: no tag, or "latest"


@dataclass(frozen=True)
class RepoFile:
    path: str  # relative to the repo root
    size: int | None  # None when the listing does not say


def is_hub_ref(ref: str) -> bool:
    return ref.startswith(PREFIXES)


def parse_ref(ref: str) -> HubRef:
    """``hf.co/user/repo[:quant]`` -> ``HubRef``; ImportFailed if malformed."""
    rest = ref
    for prefix in PREFIXES:
        rest = rest.removeprefix(prefix)
    repo, _, tag = rest.partition(":")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise ImportFailed(f"{ref}: expected hf.co/USER/REPO[:QUANT]")
    return HubRef(repo, None if tag in ("", "latest") else tag)


def quant_label(path: str) -> str | None:
    """The quantisation label in a GGUF file name (``Q4_K_M``), upper-cased; the last
    one wins, since repo names can carry labels too (``...-F16-GGUF/x.Q4_0.gguf``)."""
    found = _QUANT_RE.findall(Path(path).name.removesuffix(".gguf"))
    return found[-1].upper() if found else None


def pick_gguf(files: list[RepoFile], quant: str | None, ref: str = "") -> RepoFile:
    """The GGUF file of ``files`` for ``quant`` (None: the default choice).

    Vision projectors (``mmproj``) are never picked. ImportFailed lists the available
    labels when none matches, and refuses split (``-00001-of-00003``) files.
    """
    ggufs = [f for f in files if f.path.endswith(".gguf") and "mmproj" not in f.path.lower()]
    if not ggufs:
        raise ImportFailed(f"{ref}: no .gguf files in the repo")
    by_label: dict[str, list[RepoFile]] = {}
    for f in sorted(ggufs, key=lambda f: f.path):
        label = quant_label(f.path)
        if label:
            by_label.setdefault(label, []).append(f)
    if quant is not None:
        matches = by_label.get(quant.upper())
        if not matches:
            available = ", ".join(sorted(by_label)) or ", ".join(f.path for f in ggufs)
            raise ImportFailed(f"{ref}: no {quant} file in the repo; available: {available}")
    else:
        preferred = [q for q in DEFAULT_QUANTS if q in by_label]
        if preferred:
            matches = by_label[preferred[0]]
        else:
            matches = sorted(ggufs, key=lambda f: (f.size is None, f.size or 0, f.path))
    chosen = matches[0]
    if _SPLIT_RE.search(chosen.path):
        raise ImportFailed(f"{ref}: {chosen.path} is split into parts, which is not supported")
    return chosen


def import_hub(writer: BlobWriter, ref: str) -> Manifest:
    """Download ``ref``'s files into the hub cache and import them."""
    hub = parse_ref(ref)
    writer.stage("pulling manifest")
    files = list_files(hub, ref)
    if any(f.path.endswith(".gguf") for f in files):
        chosen = pick_gguf(files, hub.quant, ref)
        writer.stage(f"pulling {chosen.path}")
        path = _download(ref, hub, filename=chosen.path)
        return import_gguf(writer, path)
    if hub.quant is not None:
        raise ImportFailed(f"{ref}: {hub.repo_id} has no GGUF files, so no {hub.quant} tag")
    if not any(f.path.endswith(".safetensors") for f in files):
        raise ImportFailed(f"{ref}: neither .gguf nor .safetensors files in the repo")
    writer.stage(f"pulling {hub.repo_id}")
    return import_safetensors(writer, _download(ref, hub))


def list_files(hub: HubRef, ref: str = "") -> list[RepoFile]:
    """The repo's files, from the hub, or from the cached snapshot when offline or
    when the hub cannot be reached."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    if not offline():
        try:
            info = HfApi().model_info(hub.repo_id, revision=REVISION, files_metadata=True)
            return [RepoFile(s.rfilename, s.size) for s in info.siblings or []]
        except RepositoryNotFoundError as err:
            raise ImportFailed(f"{ref}: no such repo on the Hugging Face hub (or gated)") from err
        except HfHubHTTPError as err:
            raise ImportFailed(f"{ref}: the Hugging Face hub refused: {err}") from err
        except Exception as err:  # httpx connection errors: fall back to the cache
            return _cached_files(hub, ref, reason=f"cannot reach the Hugging Face hub ({err})")
    return _cached_files(hub, ref, reason="HF_HUB_OFFLINE is set")


def offline() -> bool:
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    if value is not None:
        return value.strip().upper() in {"1", "ON", "YES", "TRUE"}
    return bool(constants.HF_HUB_OFFLINE)


def cache_dir() -> str | None:
    value = os.environ.get("HF_HUB_CACHE")
    return os.path.expanduser(value) if value else None


def _cached_files(hub: HubRef, ref: str, reason: str) -> list[RepoFile]:
    from huggingface_hub import snapshot_download

    try:
        folder = Path(
            snapshot_download(
                hub.repo_id, revision=REVISION, cache_dir=cache_dir(), local_files_only=True
            )
        )
    except Exception as err:
        raise ImportFailed(
            f"{ref}: {reason} and {hub.repo_id} is not in the Hugging Face cache"
            f" {cache_dir() or '(default)'}"
        ) from err
    return [
        RepoFile(p.relative_to(folder).as_posix(), p.stat().st_size)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    ]


def _download(ref: str, hub: HubRef, filename: str | None = None) -> Path:
    """One file (``filename``) or the model-folder files of the repo, from the cache
    when there, else from the hub; the local path."""
    from huggingface_hub import hf_hub_download, snapshot_download

    kwargs = {"revision": REVISION, "cache_dir": cache_dir(), "local_files_only": offline()}
    try:
        if filename is not None:
            return Path(hf_hub_download(hub.repo_id, filename, **kwargs))  # type: ignore[arg-type]
        return Path(
            snapshot_download(
                hub.repo_id,
                allow_patterns=FOLDER_PATTERNS,
                ignore_patterns=FOLDER_IGNORE,
                **kwargs,  # type: ignore[arg-type]
            )
        )
    except Exception as err:  # hub, network and disk errors alike
        what = filename or "model files"
        raise ImportFailed(f"{ref}: cannot download {what}: {err}") from err
