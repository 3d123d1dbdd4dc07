"""Every notebook in notebooks/ runs top to bottom, and says what a reader should see.

Each starts its own embedded cluster through ``omax.connect()``; the kernel inherits
this process's environment, which points the origin and worker stores into the
test's temporary folder (the notebooks read as a user runs them, with the defaults).
"""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))

# What each notebook's outputs must show (a notebook added without an entry fails).
EXPECTED = {
    "quickstart.ipynb": ["terse:latest", "2 complete copies", "Paris", "omax page answers: 200"],
    "embeddings_search.ipynb": ["(8, 384)", "top hit: Paris is the capital"],
    "batch_inference.ipynb": ["France is Paris", "prompts/s", "speed-up: "],
}

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


def outputs(nb: nbformat.NotebookNode) -> str:
    """Printed text as the reader sees it, and what cells displayed as plain text.

    The kernel may split one ``print`` over several stream messages (``"answers:"``
    then ``" 200"``), so stream text is joined as it came, never with a separator.
    """
    parts = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            if o.get("output_type") == "stream":
                parts.append(o.get("text", ""))
            else:
                parts.append("\n" + o.get("data", {}).get("text/plain", "") + "\n")
    return "".join(parts)


def test_every_notebook_is_checked():
    assert {p.name for p in NOTEBOOKS} == set(EXPECTED)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("DASK_OMAX__STORE__URL", str(tmp_path / "origin"))
    monkeypatch.setenv("DASK_OMAX__WORKER__STORE", str(tmp_path / "workers" / "{name}"))
    nb = nbformat.read(path, as_version=4)
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    text = outputs(nb)
    for expected in EXPECTED[path.name]:
        assert expected in text, text[-3000:]
