"""Rendering an untrusted Jinja template with limits on time and output size.

A chat template can come with the request (``template`` of ``/api/generate``) or a
model an operator created. Jinja's sandbox stops attribute escapes but not work:
nested loops, ``'x' * 10**10``, ``'x'|center(10**10)`` or ``10**10**10`` would hold a
thread (and the GIL the batching thread needs) or the worker's memory. Here:

- operators ``*``, ``**`` and ``%`` and every call and filter refuse results or
  widths past ``MAX_CHARS`` before making them (the sandbox's own ``range`` already
  stops at 100,000 items);
- the output is gathered piece by piece and stops at ``max_chars``;
- a render past ``seconds`` stops: the time is checked at every call, operator and
  filter, every output piece and every 256 items of every ``for`` loop (the code
  generator wraps each loop's iterable). Without those a template does only bounded
  work in C (no operation builds past ``MAX_CHARS``), so nothing runs long between
  two checks. (An asynchronous exception raised into the rendering thread was the
  first design: it can land inside a tracer's or ``threading``'s own locked code and
  leave the lock held.)

Every failure is ``InvalidRequest`` naming the limit, so a bad template is a 400.
"""

from __future__ import annotations

import copy
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.runtime import Namespace
from jinja2.sandbox import ImmutableSandboxedEnvironment

from omax.errors import InvalidRequest

MAX_CHARS = 1 << 22  # largest string or list one template operation may build
SECONDS = 2.0  # time one render may take
_BIG_NUMBER = re.compile(r"\d{7,}")  # a width of a million or more in a format string
_ITEMS_PER_CHECK = 256  # loop items between two looks at the clock
_deadline = threading.local()  # .at: this thread's render must end by then (monotonic)

T = TypeVar("T")


class TemplateLimit(InvalidRequest):
    """A template went past a limit on work, time or size."""


def _size(value: Any) -> int:
    return len(value) if isinstance(value, str | bytes | list | tuple) else 0


def _check_args(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    for a in (*args, *kwargs.values()):
        if isinstance(a, int) and not isinstance(a, bool) and abs(a) > MAX_CHARS:
            raise TemplateLimit(f"template argument {a} is too large")
        if isinstance(a, str) and "{" in a and _BIG_NUMBER.search(a):
            raise TemplateLimit("template format width is too large")


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox with operators, calls and filters that cannot build
    huge values."""

    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.code_generator_class = _BoundedCodeGenerator
        self.filters = {name: bounded(f) for name, f in self.filters.items()}
        self.globals["namespace"] = BoundedNamespace
        self.bounded_iter = _bounded_iter  # what _BoundedCodeGenerator wraps loops in

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        check_time()
        if operator == "+":
            if _size(left) + _size(right) > MAX_CHARS:
                raise TemplateLimit("template builds a value that is too large")
        elif operator == "*":
            n = right if isinstance(right, int) else left if isinstance(left, int) else 1
            if max(_size(left), _size(right)) * max(n, 0) > MAX_CHARS:
                raise TemplateLimit("template builds a value that is too large")
        elif operator == "**" and isinstance(left, int) and isinstance(right, int):
            if right > 64 and abs(left) > 1 and abs(left).bit_length() * right > 4096:
                raise TemplateLimit("template builds a number that is too large")
        elif operator == "%" and isinstance(left, str) and _BIG_NUMBER.search(left):
            raise TemplateLimit("template format width is too large")
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        check_time()
        _check_args(args, kwargs)
        # str.format arrives wrapped by the sandbox (``__wrapped__``) or bound
        owner = getattr(getattr(__obj, "__wrapped__", __obj), "__self__", None)
        if isinstance(owner, str) and _BIG_NUMBER.search(owner):
            raise TemplateLimit("template format width is too large")
        return super().call(__context, __obj, *args, **kwargs)


class _BoundedCodeGenerator(CodeGenerator):
    """Jinja's code generator with every ``for`` loop's iterable wrapped in
    ``environment.bounded_iter``, which looks at the clock every few items."""

    def visit_For(self, node: nodes.For, frame: Frame) -> None:  # noqa: N802
        wrapped = copy.copy(node)
        wrapped.iter = nodes.Call(
            nodes.EnvironmentAttribute("bounded_iter"), [node.iter], [], None, None
        ).set_lineno(node.lineno)
        super().visit_For(wrapped, frame)


class BoundedNamespace(Namespace):
    """``namespace()`` whose attributes refuse values past ``MAX_CHARS``: the one
    place a template keeps state across loop iterations, so the one place it could
    double a string until memory runs out (``~`` joins are not interceptable)."""

    def __setitem__(self, name: str, value: Any) -> None:
        if _size(value) > MAX_CHARS:
            raise TemplateLimit("template builds a value that is too large")
        super().__setitem__(name, value)


def bounded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` refusing integer arguments past ``MAX_CHARS`` (widths, counts)."""

    def checked(*args: Any, **kwargs: Any) -> Any:
        check_time()
        _check_args(args, kwargs)
        return fn(*args, **kwargs)

    if hasattr(fn, "jinja_pass_arg"):  # pass_context / pass_environment markers
        checked.jinja_pass_arg = fn.jinja_pass_arg  # type: ignore[attr-defined]
    return checked


def render_bounded(template: Any, context: dict[str, Any], max_chars: int) -> str:
    """``template.render(**context)`` gathered piece by piece, at most ``max_chars``."""
    parts: list[str] = []
    size = 0
    for piece in template.generate(**context):
        check_time()
        size += len(piece)
        if size > max_chars:
            raise TemplateLimit(f"template output passes {max_chars} characters")
        parts.append(piece)
    return "".join(parts)


def within(seconds: float, fn: Callable[[], T]) -> T:
    """``fn()`` on this thread; template code it runs raises ``TemplateLimit`` at its
    first check past ``seconds``."""
    outer = getattr(_deadline, "at", None), getattr(_deadline, "seconds", seconds)
    _deadline.at, _deadline.seconds = time.monotonic() + seconds, seconds
    try:
        return fn()
    finally:
        _deadline.at, _deadline.seconds = outer


def check_time() -> None:
    """Raise ``TemplateLimit`` if this thread's render is past its time."""
    at = getattr(_deadline, "at", None)
    if at is not None and time.monotonic() > at:
        raise TemplateLimit(f"template took longer than {_deadline.seconds:g} s to render")


def _bounded_iter(items: Any) -> Iterator[Any]:
    for i, item in enumerate(items):
        if i % _ITEMS_PER_CHECK == 0:
            check_time()
        yield item
