"""``omax``: the command group, logging options and the one place errors become output."""

from __future__ import annotations

import sys

import click
import dask.config

import omax
from omax.config import settings
from omax.errors import OmaxError
from omax.logs import setup_logging


class OmaxGroup(click.Group):
    """Turns omax errors into one line on stderr and a non-zero exit, never a traceback."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except OmaxError as e:
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


def main() -> None:
    from omax.cli import auth, models, native, serve  # noqa: F401  (registers the commands)

    cli(prog_name="omax")
