"""Chat templates: messages (+ tools) -> prompt text.

The model's jinja chat template comes from ``ModelSpec.template`` or the tokenizer
config's ``chat_template`` (GGUF ``tokenizer.chat_template``). A request may override
``system`` and ``template``; an override template may be jinja or the simple Ollama
Go-template subset (``{{ .System }}``, ``{{ .Prompt }}``, ``{{ if .X }}…{{ end }}``).
``raw`` sends the prompt untouched.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

import jinja2

from omax.engine import sandbox
from omax.engine.request import GenerateRequest, Message
from omax.engine.spec import ModelSpec
from omax.engine.truncation import fit_messages, tail
from omax.errors import InvalidRequest

_env = sandbox.BoundedEnvironment(trim_blocks=True, lstrip_blocks=True)
MAX_OUTPUT = 1 << 24  # characters a template may render (inputs are cut to the context first)


@functools.lru_cache(maxsize=64)
def _compiled(template: str) -> Any:
    """Compile a chat template once: requests of one model share a handful of templates,
    and compiling one on every request would repeat the same work."""
    return _env.from_string(template)


_env.globals["raise_exception"] = lambda msg: (_ for _ in ()).throw(InvalidRequest(msg))
_env.filters["tojson"] = sandbox.bounded(
    lambda v, indent=None: json.dumps(v, ensure_ascii=False, indent=indent)
)

_FALLBACK = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _message_dict(m: Message) -> dict[str, Any]:
    d: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        d["tool_calls"] = [
            {"type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in m.tool_calls
        ]
    if m.tool_name:
        d["name"] = m.tool_name
    return d


def _go_template(template: str, values: dict[str, str]) -> str:
    """Render the common subset of Ollama's Go templates."""

    def if_block(m: re.Match) -> str:
        return m.group(2) if values.get(m.group(1)) else ""

    out = re.sub(
        r"\{\{-?\s*if\s+\.(\w+)\s*-?\}\}(.*?)\{\{-?\s*end\s*-?\}\}", if_block, template, flags=re.S
    )
    return re.sub(r"\{\{-?\s*\.(\w+)\s*-?\}\}", lambda m: values.get(m.group(1), ""), out)


# A family's own turn format, for a GGUF that carries no ``tokenizer.chat_template``
# (gemma's folds a system prompt into the first user turn, as its own template does).
_GEMMA = (
    "{{ bos_token }}{% set sys = namespace(text='') %}"
    "{% for m in messages %}{% if m['role'] == 'system' %}"
    "{% set sys.text = m['content'] + '\n\n' %}{% else %}"
    "<start_of_turn>{{ 'model' if m['role'] == 'assistant' else 'user' }}\n"
    "{% if m['role'] == 'user' %}{{ sys.text }}{% set sys.text = '' %}{% endif %}"
    "{{ m['content'] }}<end_of_turn>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
_PHI3 = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
_FAMILY = {"gemma2": _GEMMA, "gemma3_text": _GEMMA, "gemma3": _GEMMA, "phi3": _PHI3}


def chat_template(spec: ModelSpec) -> str:
    return (
        spec.template
        or spec.tokenizer_config.get("chat_template")
        or _FAMILY.get(spec.config.get("model_type", ""), _FALLBACK)
    )


def render(req: GenerateRequest, spec: ModelSpec, budget: int | None = None) -> tuple[str, str]:
    """Return ``(prompt_text, system_prefix_text)`` for ``req``.

    ``system_prefix_text`` is the rendered part that must survive front truncation.
    ``budget`` characters of input are kept (``omax.engine.truncation``); the Jinja
    template renders within ``sandbox.SECONDS`` and ``MAX_OUTPUT`` characters, and
    any failure of it is an InvalidRequest.
    """
    budget = budget or MAX_OUTPUT
    if req.raw:
        return tail(req.prompt or "", budget), ""
    if req.messages is not None:
        messages = fit_messages([_message_dict(m) for m in req.messages], budget)
    else:
        messages = [{"role": "user", "content": tail(req.prompt or "", budget)}]
    system = req.system if req.system is not None else spec.system
    if system and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system})
    template = req.template if req.template else chat_template(spec)
    if "{{ ." in template or "{{- ." in template or "{{ if ." in template:
        sys_text = "\n".join(m["content"] for m in messages if m["role"] == "system")
        user = [m["content"] for m in messages if m["role"] == "user"]
        text = _go_template(template, {"System": sys_text, "Prompt": user[-1] if user else ""})
        return text, ""
    tc = spec.tokenizer_config
    kwargs = {
        "messages": messages,
        "add_generation_prompt": True,
        "bos_token": tc.get("bos_token", ""),
        "eos_token": tc.get("eos_token", ""),
    }
    if req.tools:
        kwargs["tools"] = list(req.tools)
    text = _render_jinja(template, kwargs)
    sys_msgs = [m for m in messages if m["role"] == "system"]
    prefix = ""
    if sys_msgs:
        prefix = _render_jinja(
            template, {**kwargs, "messages": sys_msgs, "add_generation_prompt": False}
        )
        if not text.startswith(prefix):
            prefix = ""
    return text, prefix


def _render_jinja(template: str, kwargs: dict[str, Any]) -> str:
    """Compile (cached) and render within the sandbox's limits; a template error is a 400."""

    def run() -> str:
        return sandbox.render_bounded(_compiled(template), kwargs, MAX_OUTPUT)

    try:
        return sandbox.within(sandbox.SECONDS, run)
    except InvalidRequest:
        raise
    except (jinja2.TemplateError, RecursionError, TypeError, ValueError) as e:
        raise InvalidRequest(f"template error: {e}") from None
