"""``/openapi.json``: built from the same pydantic models that validate requests.

Request bodies come from ``omax.serve.schemas`` via ``models_json_schema``, so the
document cannot drift from what the server accepts. Response bodies are described
by the small JSON Schemas below, written from what the routes return.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from omax import __version__
from omax.serve import schemas as s

OBJ: dict[str, Any] = {"type": "object"}
OLLAMA_ERROR = {
    "type": "object",
    "properties": {"error": {"type": "string"}},
    "required": ["error"],
}
OPENAI_ERROR = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": "null"},
                "code": {"type": "null"},
            },
            "required": ["message", "type"],
        }
    },
    "required": ["error"],
}
_METRICS = {
    k: {"type": "integer"}
    for k in (
        "total_duration",
        "load_duration",
        "prompt_eval_count",
        "prompt_eval_duration",
        "eval_count",
        "eval_duration",
    )
}
GENERATE_OUT = {
    "type": "object",
    "properties": {
        "model": {"type": "string"},
        "created_at": {"type": "string"},
        "response": {"type": "string"},
        "thinking": {"type": "string"},
        "done": {"type": "boolean"},
        "done_reason": {"type": "string"},
        "context": {"type": "array", "items": {"type": "integer"}},
        **_METRICS,
    },
    "required": ["model", "created_at", "done"],
}
CHAT_OUT = {
    "type": "object",
    "properties": {
        "model": {"type": "string"},
        "created_at": {"type": "string"},
        "message": {
            "type": "object",
            "properties": {"role": {"type": "string"}, "content": {"type": "string"}},
        },
        "done": {"type": "boolean"},
        "done_reason": {"type": "string"},
        **_METRICS,
    },
    "required": ["model", "created_at", "message", "done"],
}
PROGRESS_OUT = {
    "type": "object",
    "properties": {
        "status": {"type": "string"},
        "digest": {"type": "string"},
        "total": {"type": "integer"},
        "completed": {"type": "integer"},
    },
}
HEALTH_OUT = {
    "type": "object",
    "properties": {
        "status": {"type": "string", "enum": ["ok", "unavailable"]},
        "scheduler": {"type": "boolean"},
        "workers": {"type": "integer"},
        "models": {"type": "array", "items": {"type": "string"}},
        "reason": {"type": "string"},
    },
    "required": ["status", "scheduler", "workers", "models"],
}
LIST = {
    "type": "object",
    "properties": {"models": {"type": "array", "items": OBJ}},
    "required": ["models"],
}

# (method, path, request model, response schema, streaming media type or None, family)
ROUTES: list[tuple[str, str, type[BaseModel] | None, dict[str, Any] | None, str | None]] = [
    ("get", "/", None, None, None),
    (
        "get",
        "/api/version",
        None,
        {"type": "object", "properties": {"version": {"type": "string"}}},
        None,
    ),
    ("get", "/api/health", None, HEALTH_OUT, None),
    ("post", "/api/generate", s.GenerateBody, GENERATE_OUT, "application/x-ndjson"),
    ("post", "/api/chat", s.ChatBody, CHAT_OUT, "application/x-ndjson"),
    ("post", "/api/embed", s.EmbedBody, OBJ, None),
    ("post", "/api/embeddings", s.EmbeddingsBody, OBJ, None),
    ("get", "/api/tags", None, LIST, None),
    ("post", "/api/show", s.NamedBody, OBJ, None),
    ("post", "/api/pull", s.PullBody, PROGRESS_OUT, "application/x-ndjson"),
    ("post", "/api/push", s.PushBody, PROGRESS_OUT, "application/x-ndjson"),
    ("post", "/api/create", s.CreateBody, PROGRESS_OUT, "application/x-ndjson"),
    ("post", "/api/copy", s.CopyBody, None, None),
    ("delete", "/api/delete", s.NamedBody, None, None),
    ("get", "/api/ps", None, LIST, None),
    ("get", "/api/cluster", None, OBJ, None),
    ("post", "/v1/chat/completions", s.OpenAIChatBody, OBJ, "text/event-stream"),
    ("post", "/v1/completions", s.OpenAICompletionBody, OBJ, "text/event-stream"),
    ("post", "/v1/embeddings", s.OpenAIEmbeddingsBody, OBJ, None),
    ("get", "/v1/models", None, OBJ, None),
]


def _operation(
    method: str,
    path: str,
    model: type[BaseModel] | None,
    out: dict[str, Any] | None,
    stream: str | None,
) -> dict[str, Any]:
    error = {
        "application/json": {"schema": OPENAI_ERROR if path.startswith("/v1/") else OLLAMA_ERROR}
    }
    ok: dict[str, Any] = {"description": "success"}
    if path == "/":
        ok["content"] = {"text/plain": {"schema": {"type": "string"}}}
    elif out is not None:
        ok["content"] = {"application/json": {"schema": out}}
        if stream:
            ok["content"][stream] = {"schema": {"type": "string"}}
    op: dict[str, Any] = {
        "operationId": f"{method}_{path.strip('/').replace('/', '_') or 'root'}",
        "responses": {
            "200": ok,
            "400": {"description": "invalid request", "content": error},
            "404": {"description": "unknown model or route", "content": error},
            "413": {"description": "body too large", "content": error},
        },
    }
    if path == "/api/health":
        op["responses"]["503"] = {
            "description": "not ready: the scheduler is unreachable or no worker is connected",
            "content": {"application/json": {"schema": HEALTH_OUT}},
        }
    if model is not None:
        ref = {"$ref": f"#/components/schemas/{model.__name__}"}
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref}}}
    return op


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route the app serves."""
    models = sorted({m for _, _, m, _, _ in ROUTES if m is not None}, key=lambda m: m.__name__)
    _, defs = models_json_schema(
        [(m, "validation") for m in models],
        ref_template="#/components/schemas/{model}",
        by_alias=True,
    )
    paths: dict[str, Any] = {}
    for method, path, model, out, stream in ROUTES:
        paths.setdefault(path, {})[method] = _operation(method, path, model, out, stream)
    paths["/api/blobs/{digest}"] = _blob_path()
    paths["/v1/models/{model}"] = _v1_model_path()
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "omax",
            "version": __version__,
            "description": "Ollama- and OpenAI-compatible API",
        },
        "paths": paths,
        "components": {"schemas": defs.get("$defs", {})},
    }


def _blob_path() -> dict[str, Any]:
    """``/api/blobs/{digest}`` (HEAD, POST): a path parameter and a raw body, which
    ``ROUTES`` does not describe."""
    digest = {
        "name": "digest",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": "^sha256:[0-9a-f]{64}$"},
    }
    blob_error = {"application/json": {"schema": OLLAMA_ERROR}}
    return {
        "head": {
            "operationId": "head_blob",
            "parameters": [digest],
            "responses": {
                "200": {"description": "present"},
                "404": {"description": "absent"},
                "400": {"description": "malformed digest"},
            },
        },
        "post": {
            "operationId": "post_blob",
            "parameters": [digest],
            "requestBody": {
                "required": True,
                "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
                },
            },
            "responses": {
                "201": {"description": "created"},
                "200": {"description": "already present"},
                "400": {
                    "description": "malformed digest or digest mismatch",
                    "content": blob_error,
                },
            },
        },
    }


def _v1_model_path() -> dict[str, Any]:
    """``/v1/models/{model}`` (GET): a path parameter, which ``ROUTES`` does not describe."""
    return {
        "get": {
            "operationId": "get_v1_model",
            "parameters": [
                {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "responses": {
                "200": {
                    "description": "the model",
                    "content": {"application/json": {"schema": OBJ}},
                },
                "404": {
                    "description": "unknown model",
                    "content": {"application/json": {"schema": OPENAI_ERROR}},
                },
            },
        }
    }
