"""Client commands: they talk to a running ``omax serve`` at ``OMAX_HOST`` like the
ollama CLI does (list, show, pull, push, create, cp, rm, ps, run, cluster), plus
``verify`` and ``gc``, which work on the configured origin store directly."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from omax.cli.main import cli
from omax.serve.client import OmaxClient


def _client() -> OmaxClient:
    return OmaxClient(timeout=None)


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("    ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _progress(lines) -> None:
    """Render an Ollama progress stream: a bar per digest, a line per status."""
    from tqdm import tqdm

    bars: dict[str, Any] = {}
    last_status = None
    try:
        for item in lines:
            status = item.get("status", "")
            total = item.get("total")
            key = item.get("digest") or status
            if total:
                bar = bars.get(key)
                if bar is None:
                    bar = bars[key] = tqdm(
                        total=total, desc=status, unit="B", unit_scale=True, leave=True
                    )
                bar.update(max(0, (item.get("completed") or 0) - bar.n))
            elif status != last_status:
                click.echo(status)
            last_status = status
    finally:
        for bar in bars.values():
            bar.close()


@cli.command("list")
def list_() -> None:
    """List models."""
    with _client() as c:
        models = c.list()
    rows = [
        [m["name"], m["digest"].split(":")[-1][:12], _size(m["size"]), m["modified_at"][:19]]
        for m in models
    ]
    _table(rows, ["NAME", "ID", "SIZE", "MODIFIED"])


@cli.command()
@click.argument("model")
@click.option("--modelfile", is_flag=True, help="Show the Modelfile.")
@click.option("--template", is_flag=True, help="Show the template.")
@click.option("--parameters", is_flag=True, help="Show the parameters.")
@click.option("--system", is_flag=True, help="Show the system prompt.")
@click.option("--license", "license_", is_flag=True, help="Show the license.")
def show(
    model: str, modelfile: bool, template: bool, parameters: bool, system: bool, license_: bool
) -> None:
    """Show information for a model."""
    with _client() as c:
        info = c.show(model)
    for flag, key in (
        (modelfile, "modelfile"),
        (template, "template"),
        (parameters, "parameters"),
        (system, "system"),
        (license_, "license"),
    ):
        if flag:
            click.echo(info.get(key, ""))
            return
    details = info.get("details", {})
    mi = info.get("model_info", {})
    arch = mi.get("general.architecture", details.get("family", ""))
    click.echo("  Model")
    click.echo(f"    architecture        {arch}")
    click.echo(f"    parameters          {details.get('parameter_size', '')}")
    ctx = mi.get(f"{arch}.context_length")
    if ctx:
        click.echo(f"    context length      {ctx}")
    click.echo(f"    quantization        {details.get('quantization_level', '')}")
    click.echo("\n  Capabilities")
    for cap in info.get("capabilities", []):
        click.echo(f"    {cap}")
    if info.get("parameters"):
        click.echo("\n  Parameters")
        for line in info["parameters"].splitlines():
            click.echo(f"    {line}")


@cli.command()
@click.argument("model")
@click.option("--insecure", is_flag=True, help="Allow insecure connections.")
def pull(model: str, insecure: bool) -> None:
    """Pull a model (ollama://NAME from a local Ollama folder, hf.co/USER/REPO)."""
    with _client() as c:
        _progress(c.pull(model, insecure=insecure))


@cli.command()
@click.argument("model")
@click.option("--to", "destination", default=None, help="Another omax server or a store URL.")
def push(model: str, destination: str | None) -> None:
    """Push a model to another omax or an origin store URL."""
    with _client() as c:
        _progress(c.push(model, destination))


@cli.command()
@click.argument("model")
@click.option(
    "-f",
    "--file",
    "modelfile",
    type=click.Path(exists=True, dir_okay=False),
    default="Modelfile",
    help="Modelfile path.",
)
def create(model: str, modelfile: str) -> None:
    """Create a model from a Modelfile (FROM a GGUF/safetensors file or folder, or a model)."""
    from omax.sharding import modelfile as mf

    path = Path(modelfile)
    spec = mf.parse(path.read_text())
    if not spec.from_:
        raise click.UsageError("the Modelfile has no FROM line")
    body: dict[str, Any] = {}
    source = (path.parent / Path(spec.from_).expanduser()).resolve()
    with _client() as c:
        if source.exists():
            files = (
                [source]
                if source.is_file()
                else sorted(
                    p for p in source.rglob("*") if p.is_file() and not p.name.startswith(".")
                )
            )
            uploads = {}
            for f in files:
                click.echo(f"copying file {f.name}")
                name = f.name if source.is_file() else str(f.relative_to(source))
                uploads[name] = c.create_blob(f)
            body["files"] = uploads
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
        _progress(c.create(model, **body))


@cli.command()
@click.argument("source")
@click.argument("destination")
def cp(source: str, destination: str) -> None:
    """Copy a model."""
    with _client() as c:
        c.copy(source, destination)
    click.echo(f"copied '{source}' to '{destination}'")


@cli.command()
@click.argument("models", nargs=-1, required=True)
def rm(models: tuple[str, ...]) -> None:
    """Remove models."""
    with _client() as c:
        for m in models:
            c.delete(m)
            click.echo(f"deleted '{m}'")


@cli.command()
def ps() -> None:
    """List loaded models, where they run and when they unload."""
    with _client() as c:
        rows = c.ps()
    _table(
        [
            [
                m["name"],
                m["digest"].split(":")[-1][:12],
                _size(m["size"]),
                m.get("device", "") or ("GPU" if m.get("size_vram") else "CPU"),
                m.get("worker", ""),
                str(m.get("expires_at", ""))[:19],
            ]
            for m in rows
        ],
        ["NAME", "ID", "SIZE", "PROCESSOR", "WORKER", "UNTIL"],
    )


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
def cluster(as_json: bool) -> None:
    """Show every worker: slots, free memory, replicas and loaded models."""
    with _client() as c:
        state = c.request("GET", "/api/cluster").json()
    if as_json:
        click.echo(json.dumps(state, indent=2))
        return
    for w in state.get("workers", []):
        click.echo(w["address"])
        for s in w.get("slots", []):
            click.echo(
                f"  slot {s['id']:<8} {s['name']:<20} {_size(s['memory_free'])} free of {_size(s['memory_total'])}"
            )
        for d, r in w.get("replicas", {}).items():
            state_word = "complete" if r["complete"] else "partial"
            click.echo(
                f"  replica {d.split(':')[-1][:12]}  {state_word}  {_size(r['bytes_done'])}/{_size(r['bytes_total'])}"
            )
        for m in w.get("loaded", []):
            click.echo(f"  loaded {m['name']} on {m['slot']} ({_size(m['memory'])})")


@cli.command()
@click.argument("model")
@click.argument("prompt", nargs=-1)
@click.option("--keepalive", default=None, help="How long to keep the model loaded (e.g. 5m).")
def run(model: str, prompt: tuple[str, ...], keepalive: str | None) -> None:
    """Run a model: one answer with a PROMPT, an interactive chat without one."""
    extra: dict[str, Any] = {} if keepalive is None else {"keep_alive": keepalive}
    with _client() as c:
        if prompt or not sys.stdin.isatty():
            text = " ".join(prompt) if prompt else sys.stdin.read()
            messages = [{"role": "user", "content": text}]
            for chunk in c.chat(model, messages, **extra):
                click.echo(chunk.get("message", {}).get("content", ""), nl=False)
            click.echo()
            return
        history: list[dict[str, str]] = []
        click.echo("Send a message (/bye to quit)")
        while True:
            try:
                line = click.prompt(">>>", prompt_suffix=" ", default="", show_default=False)
            except (EOFError, click.Abort):
                break
            if line.strip() in ("/bye", "/exit"):
                break
            if not line.strip():
                continue
            history.append({"role": "user", "content": line})
            reply = []
            for chunk in c.chat(model, history, **extra):
                piece = chunk.get("message", {}).get("content", "")
                reply.append(piece)
                click.echo(piece, nl=False)
            click.echo("\n")
            history.append({"role": "assistant", "content": "".join(reply)})


@cli.command()
def verify() -> None:
    """Re-hash every blob of the origin store and report damage."""
    from omax.config import settings
    from omax.sharding.modelstore import ModelStore

    damaged = ModelStore(settings().store_url).verify()
    if damaged:
        for d in damaged:
            click.echo(f"damaged: {d}")
        sys.exit(1)
    click.echo("all blobs verified")


@cli.command()
@click.option("--apply", is_flag=True, help="Delete (default: dry run).")
def gc(apply: bool) -> None:
    """Remove blobs that no manifest references (dry run unless --apply)."""
    from omax.config import settings
    from omax.sharding.modelstore import ModelStore

    digests, nbytes = ModelStore(settings().store_url).gc(dry_run=not apply)
    for d in digests:
        click.echo(d)
    verb = "removed" if apply else "would remove"
    click.echo(f"{verb} {len(digests)} blob(s), {_size(nbytes)}")
