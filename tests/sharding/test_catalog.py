import multiprocessing
import threading
import uuid

import pytest

from omax.errors import CatalogConflict, InvalidRequest, ModelNotFound
from omax.sharding.catalog import Catalog, normalize_name, parse_name

D = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    "name,short",
    [
        ("llama3", "llama3:latest"),
        ("llama3.2:1b", "llama3.2:1b"),
        ("library/qwen:7b", "qwen:7b"),
        ("user/model", "user/model:latest"),
        ("hf.co/bartowski/SmolLM2-135M-GGUF:Q4_K_M", "hf.co/bartowski/SmolLM2-135M-GGUF:Q4_K_M"),
        ("localhost:5000/ns/m:t", "localhost:5000/ns/m:t"),
    ],
)
def test_valid_names(name, short):
    assert normalize_name(name) == short


@pytest.mark.parametrize(
    "name",
    ["", " x", "a/b/c/d", "-x", "x:", "x:-t", "na.me/x", "x y", "a" * 81, "x:" + "t" * 81, "ü"],
)
def test_invalid_names(name):
    with pytest.raises(InvalidRequest):
        parse_name(name)


@pytest.fixture(params=["memory", "local"])
def url(request, tmp_path):
    return f"memory://cat-{uuid.uuid4().hex}" if request.param == "memory" else str(tmp_path)


def test_set_get_delete(url):
    cat = Catalog(url)
    assert cat.read() == (0, {})
    cat.set("m", D, 10)
    entry = cat.get("M:latest")
    assert (entry.name, entry.digest, entry.size) == ("m:latest", D, 10)
    cat.delete("m")
    with pytest.raises(ModelNotFound):
        cat.get("m")
    with pytest.raises(ModelNotFound):
        cat.delete("m")
    assert cat.read()[0] == 2


def test_swap_conflict(url):
    cat = Catalog(url)
    gen, models = cat.read()
    cat.swap(gen, {"a:latest": {"digest": D, "size": 1, "modified_at": "x"}})
    with pytest.raises(CatalogConflict):
        cat.swap(gen, {})
    assert list(cat.read()[1]) == ["a:latest"]


def test_concurrent_threads_lose_nothing(url):
    cat = Catalog(url)

    def work(i):
        for j in range(5):
            Catalog(url).set(f"t{i}-{j}", D, i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    gen, models = cat.read()
    assert len(models) == 40 and gen == 40


def _proc(root, i):
    for j in range(5):
        Catalog(root).set(f"p{i}-{j}", D, i)


def test_concurrent_processes_lose_nothing(tmp_path):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_proc, args=(str(tmp_path), i)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert all(p.exitcode == 0 for p in procs)
    gen, models = Catalog(str(tmp_path)).read()
    assert len(models) == 20 and gen == 20
