"""``omax run MODEL [PROMPT]``: one answer, or an interactive chat (``omax.cli.interactive``).

A model the server does not have is pulled first, as ``ollama run`` does. Stdin that
is not a terminal is read and put before the prompt; a terminal on both ends with no
prompt starts the interactive session.
"""

from __future__ import annotations

import sys

import click

from omax.cli.chat import Session, generate_once, parse_format, parse_think
from omax.cli.client import OmaxClient, ResponseError
from omax.cli.main import cli
from omax.cli.models import client
from omax.cli.render import progress


def show_or_pull(c: OmaxClient, model: str, insecure: bool = False) -> str:
    """Make sure the server has ``model``, pulling it (with progress) if not; return the
    name to run it by (``ollama://NAME`` is imported as ``NAME``)."""
    local = model.split("://", 1)[1] if "://" in model else model
    try:
        c.show(local)
        return local
    except ResponseError as err:
        if err.status != 404:
            raise
    progress(c.pull(model, insecure=insecure), err=True)  # stdout is the answer
    c.show(local)
    return local


@cli.command()
@click.argument("model")
@click.argument("prompt", nargs=-1)
@click.option("--format", "format_", default=None, help="Response format: json or a JSON Schema.")
@click.option("--verbose", is_flag=True, help="Show timings for the response.")
@click.option(
    "--think",
    is_flag=False,
    flag_value="true",
    default=None,
    help="Thinking for models that can: true/false or high/medium/low (--think alone: true).",
)
@click.option("--hidethinking", is_flag=True, help="Do not print the thinking.")
@click.option("--nowordwrap", is_flag=True, help="Don't wrap words to the next line.")
@click.option("--keepalive", default=None, help="How long to keep the model loaded (e.g. 5m).")
@click.option("--insecure", is_flag=True, help="Pull from an insecure registry if needed.")
def run(
    model: str,
    prompt: tuple[str, ...],
    format_: str | None,
    verbose: bool,
    think: str | None,
    hidethinking: bool,
    nowordwrap: bool,
    keepalive: str | None,
    insecure: bool,
) -> None:
    """Run a model: one answer with a PROMPT, an interactive chat without one."""
    parts = list(prompt)
    if think not in (None, "", "true", "false", "high", "medium", "low"):
        # `--think what is…`: click took the prompt's first word as the value, where
        # ollama's flag parser leaves it in the prompt (a level needs --think=LEVEL).
        parts.insert(0, think)
        think = "true"
    session = Session(
        model=model,
        format=parse_format(format_),
        think=parse_think(think),
        hide_thinking=hidethinking,
        keep_alive=keepalive,
        wrap=not nowordwrap and sys.stdout.isatty(),
        verbose=verbose,
    )
    if not sys.stdin.isatty():
        piped = sys.stdin.read()
        if piped:
            parts.insert(0, piped)
    interactive = not parts and sys.stdin.isatty() and sys.stdout.isatty()
    with client() as c:
        session.model = show_or_pull(c, model, insecure)
        if interactive:
            from omax.cli.interactive import Repl

            Repl(c, session).loop()
        elif not generate_once(c, session, " ".join(parts)):
            sys.exit(130)  # stopped with Ctrl-C, as a shell reports SIGINT
