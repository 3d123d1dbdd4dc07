"""``omax``: the command group, logging options and the one place errors become output.

Commands live in the modules of ``COMMAND_MODULES``; the group imports them the first
time it is asked for a command, so ``cli`` alone is the whole command line.
"""

from __future__ import annotations

import importlib
import sys

import click
import dask.config

import omax
from omax.config import settings
from omax.errors import OmaxError
from omax.logs import setup_logging

COMMAND_MODULES = ("auth", "models", "native", "run", "serve")
ALIASES = {"ls": "list"}


class OmaxGroup(click.Group):
    """Turns omax errors into one line on stderr and a non-zero exit, never a traceback;
    registers the command modules on first use and resolves aliases (``ls``)."""

    def _register(self) -> None:
        for name in COMMAND_MODULES:
            importlib.import_module(f"omax.cli.{name}")

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        self._register()
        return super().get_command(ctx, ALIASES.get(cmd_name, cmd_name))

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._register()
        return super().list_commands(ctx)

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except OmaxError as e:
            click.echo(f"Error: {e}", err=True)
            sys.exit(1)
        except BrokenPipeError:
            sys.exit(1)  # the reader went away (`omax ls | head`): nobody to tell
        except OSError as e:  # a file a command reads or writes, a port serve binds
            click.echo(f"Error: {e}", err=True)
            sys.exit(1)


@click.group(cls=OmaxGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(omax.__version__, "--version", prog_name="omax")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default=None,
    help="Log lines as text (default) or one JSON object per line.",
)
@click.option(
    "--log-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also log to this file, rotated.",
)
@click.option("--log-level", default=None, help="DEBUG, INFO, WARNING or ERROR.")
def cli(log_format: str | None, log_file: str | None, log_level: str | None) -> None:
    """omax: serve large language models from a Dask cluster behind an Ollama-compatible API."""
    cfg = settings()
    fmt, level = log_format or cfg.log_format, (log_level or cfg.log_level).upper()
    setup_logging(
        fmt=fmt,
        level=level,
        file=log_file if log_file is not None else cfg.log_file,
        max_bytes=cfg.log_max_bytes,
        backups=cfg.log_backups,
    )
    # Processes this one starts (the embedded cluster's workers) log the same way: a
    # Dask nanny hands its config to the worker it starts.
    dask.config.set({"omax.log.format": fmt, "omax.log.level": level})


@cli.command("help")
@click.argument("command", nargs=-1)
@click.pass_context
def help_(ctx: click.Context, command: tuple[str, ...]) -> None:
    """Help about any command: omax help [COMMAND [SUBCOMMAND]]."""
    parent = ctx.parent
    assert parent is not None
    current: click.Command = cli
    for word in command:
        if not isinstance(current, click.Group):
            break
        found = current.get_command(parent, word)
        if found is None:
            raise click.UsageError(f"unknown command '{word}' (see omax help)")
        parent = found.make_context(word, [], parent=parent, resilient_parsing=True)
        current = found
    click.echo(parent.get_help())


def main() -> None:
    cli(prog_name="omax")
