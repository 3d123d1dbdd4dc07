"""``omax create``'s client half: read the Modelfile, hash and upload the files its
FROM names (a bar for each while hashing and while uploading), and build the
``/api/create`` body."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from omax.cli.client import OmaxClient


def create_body(c: OmaxClient, modelfile: Path) -> dict[str, Any]:
    """The ``/api/create`` fields for ``modelfile``; local FROM files are uploaded first."""
    from omax.sharding import modelfile as mf

    spec = mf.parse(modelfile.read_text())
    if not spec.from_:
        raise click.UsageError("the Modelfile has no FROM line")
    body: dict[str, Any] = {}
    source = (modelfile.parent / Path(spec.from_).expanduser()).resolve()
    if source.exists():
        click.echo("gathering model components")
        body["files"] = upload_files(c, source)
    else:
        body["from_"] = spec.from_
    for key in ("template", "system"):
        if getattr(spec, key) is not None:
            body[key] = getattr(spec, key)
    if spec.parameters:
        body["parameters"] = spec.parameters
    if spec.messages:
        body["messages"] = spec.messages
    if spec.license:
        body["license"] = spec.license
    return body


def upload_files(c: OmaxClient, source: Path) -> dict[str, str]:
    """Upload a file, or every file under a folder; return name → ``sha256:`` digest."""
    files = (
        [source]
        if source.is_file()
        else sorted(p for p in source.rglob("*") if p.is_file() and not p.name.startswith("."))
    )
    uploads = {}
    for f in files:
        name = f.name if source.is_file() else str(f.relative_to(source))
        uploads[name] = c.create_blob(f, progress=_Bars(name))
    return uploads


class _Bars:
    """A ``create_blob`` progress callback: one tqdm bar per phase of one file."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.bars: dict[str, Any] = {}

    def __call__(self, phase: str, done: int, total: int) -> None:
        from tqdm import tqdm

        bar = self.bars.get(phase)
        if bar is None:
            for other in self.bars.values():
                other.close()
            label = "hashing" if phase == "hashing" else "copying file"
            bar = self.bars[phase] = tqdm(
                total=total, desc=f"{label} {self.name}", unit="B", unit_scale=True, leave=True
            )
        bar.update(max(0, done - bar.n))
        if done >= total:
            bar.close()
