"""Client commands: they talk to a running ``omax serve`` (at ``OMAX_HOST``, else
``OLLAMA_HOST``) like the ollama CLI does (list/ls, show, pull, push, create, cp, rm,
ps, stop, cluster; ``run`` lives in ``omax.cli.run``), plus ``verify`` and ``gc``,
which work on the configured origin store directly."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from omax.cli.client import OmaxClient, ResponseError
from omax.cli.main import cli
from omax.cli.render import human_bytes, progress, table
from omax.cli.timefmt import human_time, parse_time


def client() -> OmaxClient:
    """The client every command uses: no read timeout (a pull may take an hour)."""
    return OmaxClient(timeout=None)


def _short(digest: str) -> str:
    return digest.split(":")[-1][:12]


@cli.command("list")
@click.argument("prefix", required=False)
def list_(prefix: str | None) -> None:
    """List models (those whose name starts with PREFIX). Also: omax ls."""
    headers = ["NAME", "ID", "SIZE", "MODIFIED"]
    _print_models(OmaxClient.list, _list_row, headers, prefix, any_case=True)


def _list_row(m: dict[str, Any], now: float) -> list[str]:
    return [m["name"], _short(m["digest"]), human_bytes(m["size"]), _modified(m, now)]


def _print_models(
    fetch: Callable[[OmaxClient], list[dict[str, Any]]],
    row: Callable[[dict[str, Any], float], list[str]],
    headers: list[str],
    prefix: str | None,
    any_case: bool = False,
) -> None:
    """A table of the models ``fetch`` lists whose name starts with ``prefix`` (all
    without one; ``omax list`` matches it in any case, ``omax ps`` exactly). ``row``
    gets the time now, for ages and expiries."""
    with client() as c:
        models = fetch(c)
    now = time.time()
    table([row(m, now) for m in models if _named(m["name"], prefix, any_case)], headers)


def _named(name: str, prefix: str | None, any_case: bool) -> bool:
    if not prefix:
        return True
    if any_case:
        return name.lower().startswith(prefix.lower())
    return name.startswith(prefix)


def _modified(model: dict[str, Any], now: float) -> str:
    return human_time(parse_time(model.get("modified_at")), now)


SHOW_FIELDS = ("license", "modelfile", "parameters", "system", "template")


@cli.command()
@click.argument("model")
@click.option("--license", "license_", is_flag=True, help="Show the license.")
@click.option("--modelfile", is_flag=True, help="Show the Modelfile.")
@click.option("--parameters", is_flag=True, help="Show the parameters.")
@click.option("--system", is_flag=True, help="Show the system message.")
@click.option("--template", is_flag=True, help="Show the prompt template.")
@click.option("-v", "--verbose", is_flag=True, help="Show every model_info entry.")
def show(
    model: str,
    license_: bool,
    modelfile: bool,
    parameters: bool,
    system: bool,
    template: bool,
    verbose: bool,
) -> None:
    """Show information for a model."""
    from omax.cli.showinfo import print_info

    chosen = [
        f
        for f, on in zip(
            SHOW_FIELDS, (license_, modelfile, parameters, system, template), strict=True
        )
        if on
    ]
    if len(chosen) > 1:
        raise click.UsageError(
            "only one of " + ", ".join(f"--{f}" for f in SHOW_FIELDS) + " at a time"
        )
    with client() as c:
        info = c.show(model, verbose=verbose)
    if chosen:
        value = info.get(chosen[0]) or ""
        click.echo("\n".join(value) if isinstance(value, list) else value)
        return
    print_info(info, verbose)


@cli.command()
@click.argument("model")
@click.option("--insecure", is_flag=True, help="Use an insecure registry (plain HTTP, any TLS).")
def pull(model: str, insecure: bool) -> None:
    """Pull a model: NAME[:TAG] from a registry, ollama://NAME from a local Ollama
    folder, hf.co/USER/REPO from Hugging Face."""
    with client() as c:
        progress(c.pull(model, insecure=insecure))


@cli.command()
@click.argument("model")
@click.option("--insecure", is_flag=True, help="Use an insecure registry (plain HTTP, any TLS).")
@click.option("--to", "destination", default=None, help="Another omax server or a store URL.")
def push(model: str, insecure: bool, destination: str | None) -> None:
    """Push a model to the registry its name names, another omax or a store URL."""
    with client() as c:
        progress(c.push(model, destination, insecure=insecure))


@cli.command()
@click.argument("model")
@click.option(
    "-f",
    "--file",
    "modelfile",
    type=click.Path(dir_okay=False),
    default="Modelfile",
    help="Modelfile path (default: Modelfile).",
)
@click.option("-q", "--quantize", default=None, help="Quantize to this level (e.g. q4_K_M).")
def create(model: str, modelfile: str, quantize: str | None) -> None:
    """Create a model from a Modelfile (FROM a GGUF/safetensors file or folder, or a model)."""
    from omax.cli.upload import create_body

    path = Path(modelfile)
    if not path.is_file():
        raise click.UsageError(f"no Modelfile at {path} (use -f to name one)")
    with client() as c:
        body = create_body(c, path)
        if quantize:
            body["quantize"] = quantize
        progress(c.create(model, **body))


@cli.command()
@click.argument("source")
@click.argument("destination")
def cp(source: str, destination: str) -> None:
    """Copy a model."""
    with client() as c:
        c.copy(source, destination)
    click.echo(f"copied '{source}' to '{destination}'")


@cli.command()
@click.argument("models", nargs=-1, required=True)
def rm(models: tuple[str, ...]) -> None:
    """Remove models (each is unloaded first)."""
    with client() as c:
        for m in models:
            _unload(c, m, quiet=True)
            c.delete(m)
            click.echo(f"deleted '{m}'")


def _unload(c: OmaxClient, model: str, quiet: bool = False) -> None:
    try:
        for _ in c.generate(model, keep_alive=0):
            pass
    except ResponseError as err:
        if err.status == 404:
            if quiet:
                return
            raise ResponseError(f'couldn\'t find model "{model}" to stop', 404) from err
        if not quiet:
            raise
        click.echo(f"Warning: unable to stop model '{model}'", err=True)


@cli.command()
@click.argument("model")
def stop(model: str) -> None:
    """Stop (unload) a running model."""
    with client() as c:
        _unload(c, model)


@cli.command()
@click.argument("prefix", required=False)
def ps(prefix: str | None) -> None:
    """List loaded models: size, where they run and when they unload."""
    headers = ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL", "WORKER"]
    _print_models(OmaxClient.ps, _ps_row, headers, prefix)


def _ps_row(m: dict[str, Any], now: float) -> list[str]:
    return [
        m["name"],
        _short(m["digest"]),
        human_bytes(m["size"]),
        _processor(m),
        str(m.get("context_length") or ""),
        _until(m, now),
        m.get("worker", "") + (f" ({m['device']})" if m.get("device") else ""),
    ]


def _processor(m: dict[str, Any]) -> str:
    size, vram = m.get("size") or 0, m.get("size_vram") or 0
    if vram == 0:
        return "100% CPU"
    if vram >= size:
        return "100% GPU"
    cpu = round((size - vram) / size * 100)
    return f"{cpu}%/{100 - cpu}% CPU/GPU"


def _until(m: dict[str, Any], now: float) -> str:
    when = parse_time(m.get("expires_at"))
    if when is not None and when < now:
        return "Stopping..."
    return human_time(when, now)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
def cluster(as_json: bool) -> None:
    """Show every worker: slots, free memory, replicas and loaded models."""
    with client() as c:
        state = c.request("GET", "/api/cluster").json()
    if as_json:
        click.echo(json.dumps(state, indent=2))
        return
    for w in state.get("workers", []):
        click.echo(w["address"])
        for s in w.get("slots", []):
            click.echo(
                f"  slot {s['id']:<8} {s['name']:<20} {human_bytes(s['memory_free'])} free of {human_bytes(s['memory_total'])}"
            )
        for d, r in w.get("replicas", {}).items():
            state_word = "complete" if r["complete"] else "partial"
            click.echo(
                f"  replica {d.split(':')[-1][:12]}  {state_word}  {human_bytes(r['bytes_done'])}/{human_bytes(r['bytes_total'])}"
            )
        for m in w.get("loaded", []):
            click.echo(f"  loaded {m['name']} on {m['slot']} ({human_bytes(m['memory'])})")


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
    """Remove blobs that no manifest references, and downloads abandoned pulls left
    (dry run unless --apply)."""
    from omax.config import settings
    from omax.sharding.modelstore import ModelStore

    digests, nbytes = ModelStore(settings().store_url).gc(dry_run=not apply)
    for d in digests:
        click.echo(d)
    verb = "removed" if apply else "would remove"
    blobs = sum(d.startswith("sha256:") for d in digests)
    downloads = f" and {len(digests) - blobs} download(s)" if len(digests) > blobs else ""
    click.echo(f"{verb} {blobs} blob(s){downloads}, {human_bytes(nbytes)}")
