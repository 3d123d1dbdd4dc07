"""One SmolLM2 import shared by every test that needs it (it takes seconds)."""

from __future__ import annotations

import pytest

from omax.sharding.bundled import minilm_folder_path, smollm2_gguf_path
from omax.sharding.modelstore import ModelStore


@pytest.fixture(scope="session")
def smollm2_path():
    return smollm2_gguf_path()


@pytest.fixture(scope="session")
def minilm_path():
    return minilm_folder_path()


@pytest.fixture(scope="session")
def smol_store(tmp_path_factory, smollm2_path):
    """A local store holding ``smollm2:135m``; tests must not delete that name."""
    store = ModelStore(str(tmp_path_factory.mktemp("store")))
    report = store.import_path(smollm2_path, "smollm2:135m")
    return store, report
