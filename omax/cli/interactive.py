"""The interactive ``omax run`` session: ``>>>`` prompts, ``\"\"\"`` blocks and slash
commands, as ``ollama run`` has them.

Lines are read with ``input()`` (GNU readline gives editing and history). Ctrl-C at
the prompt clears the line; Ctrl-C during a reply cancels that reply only; Ctrl-D or
``/bye`` ends the session. Everything the user sets lives in a ``chat.Session``.
"""

from __future__ import annotations

from typing import Any

import click

from omax.cli import help_text
from omax.cli.chat import Session, chat_once
from omax.cli.client import OmaxClient, ResponseError
from omax.cli.showinfo import print_info

BLOCK = '"""'


class Repl:
    def __init__(self, c: OmaxClient, session: Session) -> None:
        self.c = c
        self.s = session
        self.block: list[str] | None = None  # lines of an open \"\"\" block
        self.block_is_system = False

    def loop(self) -> None:
        """Load the model, then read and act on lines until /bye or Ctrl-D."""
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
        for _ in self.c.generate(self.s.model, **self.s.fields()):
            pass  # an empty prompt loads the model, so errors show before the prompt
        click.echo("Send a message (/? for help)")
        while True:
            try:
                line = input("... " if self.block is not None else ">>> ")
            except EOFError:
                click.echo()
                return
            except KeyboardInterrupt:
                if self.block is None:
                    click.echo("\nUse Ctrl + d or /bye to exit.")
                else:
                    click.echo()
                self.block = None
                continue
            try:
                if self.handle(line) is False:
                    return
            except KeyboardInterrupt:  # during a command (/save, /show): stop it, stay
                click.echo()

    def handle(self, line: str) -> bool:
        """Act on one line; False ends the session."""
        if self.block is not None:
            return self._continue_block(line)
        if line.startswith(BLOCK):
            rest = line[len(BLOCK) :]
            if rest.endswith(BLOCK):
                return self._send(rest[: -len(BLOCK)])
            self.block, self.block_is_system = [rest], False
            return True
        if line.startswith("/"):
            return self._command(line)
        if line.strip():
            return self._send(line)
        return True

    def _continue_block(self, line: str) -> bool:
        assert self.block is not None
        if not line.endswith(BLOCK):
            self.block.append(line)
            return True
        self.block.append(line[: -len(BLOCK)])
        text, self.block = "\n".join(self.block), None
        if self.block_is_system:
            self._set_system(text)
            return True
        return self._send(text)

    def _send(self, text: str) -> bool:
        if not text.strip():
            return True
        self.s.messages.append({"role": "user", "content": text})
        try:
            answer = chat_once(self.c, self.s)
        except ResponseError as err:
            if err.status != 400:
                raise
            click.echo(f"error: {err}")  # e.g. a think value the model refuses
            self.s.messages.pop()
            return True
        if answer is not None:
            self.s.messages.append(answer)
        return True

    def _command(self, line: str) -> bool:
        args = line.split()
        name = args[0]
        if name in ("/bye", "/exit"):
            return False
        handler = {
            "/set": self._cmd_set,
            "/show": self._cmd_show,
            "/load": self._cmd_load,
            "/save": self._cmd_save,
            "/clear": self._cmd_clear,
            "/?": self._cmd_help,
            "/help": self._cmd_help,
        }.get(name)
        if handler is None:
            click.echo(f"Unknown command '{name}'. Type /? for help")
        else:
            handler(args[1:], line)
        return True

    def _cmd_help(self, args: list[str], line: str) -> None:
        topic = args[0].lstrip("/") if args else ""
        text = {
            "set": help_text.SET,
            "show": help_text.SHOW,
            "shortcut": help_text.SHORTCUTS,
            "shortcuts": help_text.SHORTCUTS,
        }.get(topic, help_text.USAGE)
        click.echo(text, err=True)

    def _cmd_clear(self, args: list[str], line: str) -> None:
        self.s.messages = [{"role": "system", "content": self.s.system}] if self.s.system else []
        click.echo("Cleared session context")

    def _cmd_set(self, args: list[str], line: str) -> None:
        from omax.cli.slash import apply_set

        if args and args[0] == "system":
            self._set_system_line(line.split(None, 2)[2] if len(args) > 1 else "")
            return
        click.echo(apply_set(self.s, args), nl=False)

    def _set_system_line(self, text: str) -> None:
        if not text:
            click.echo(help_text.SET, err=True)
            return
        if text.startswith(BLOCK):
            text = text[len(BLOCK) :]
            if not text.endswith(BLOCK):
                self.block, self.block_is_system = [text], True
                return
            text = text[: -len(BLOCK)]
        self._set_system(text)

    def _set_system(self, text: str) -> None:
        """Set the system message: replace a trailing one, else append (as Ollama does)."""
        self.s.system = text
        message = {"role": "system", "content": text}
        if self.s.messages and self.s.messages[-1]["role"] == "system":
            self.s.messages[-1] = message
        else:
            self.s.messages.append(message)
        click.echo("Set system message.")

    def _cmd_show(self, args: list[str], line: str) -> None:
        from omax.cli.slash import show_text

        if not args:
            click.echo(help_text.SHOW, err=True)
            return
        info = self.c.show(self.s.model)
        if args[0] == "info":
            print_info(info)
        else:
            click.echo(show_text(self.s, info, args[0]))

    def _cmd_load(self, args: list[str], line: str) -> None:
        if len(args) != 1:
            click.echo("Usage:\n  /load <modelname>")
            return
        click.echo(f"Loading model '{args[0]}'")
        try:
            self.c.show(args[0])
            for _ in self.c.generate(args[0], **self.s.fields()):
                pass
        except ResponseError as err:
            if err.status != 404:
                raise
            click.echo(f"Couldn't find model '{args[0]}'")
            return
        # a new model, a new conversation: its own system message, the session's options
        self.s.model, self.s.messages, self.s.system = args[0], [], None

    def _cmd_save(self, args: list[str], line: str) -> None:
        if len(args) != 1:
            click.echo("Usage:\n  /save <modelname>")
            return
        body: dict[str, Any] = {"from_": self.s.model}
        if self.s.system:
            body["system"] = self.s.system
        if self.s.options:
            body["parameters"] = self.s.options
        if self.s.messages:
            body["messages"] = [
                {"role": m["role"], "content": m["content"]} for m in self.s.messages
            ]
        try:
            for _ in self.c.create(args[0], **body):
                pass
        except ResponseError as err:
            if err.status != 400:
                raise
            click.echo(f"error: {err}")
            return
        click.echo(f"Created new model '{args[0]}'")
