"""Roles and the route table: which least role each route needs. Pure data and functions.

Roles are ordered; each includes the ones below it:

    viewer    tags, show, ps, version, the OpenAPI document
    user      + generate, chat, embed, embeddings, the OpenAI routes
    operator  + pull, push, create, copy, delete, blobs, cluster
    admin     everything (tokens and keys are issued through the CLI with the secret)

``GET /`` and ``/api/health`` are open for probes; ``/metrics`` follows the
``omax.auth.metrics`` policy. A path missing from the table needs ``admin``, so a new
route is closed until someone places it here.
"""

from __future__ import annotations

import enum


class Role(enum.IntEnum):
    viewer = 1
    user = 2
    operator = 3
    admin = 4

    @classmethod
    def parse(cls, name: object) -> Role:
        """The role named ``name``; ValueError if there is none."""
        if not isinstance(name, str) or name not in cls.__members__:
            raise ValueError(f"unknown role {name!r}: expected one of {', '.join(ROLE_NAMES)}")
        return cls[name]


ROLE_NAMES = tuple(Role.__members__)

OPEN = None  # a route anyone may call

# path -> least role (None: open). Exact paths first, then prefixes.
ROUTE_ROLES: dict[str, Role | None] = {
    "/": OPEN,
    "/api/health": OPEN,
    "/api/version": Role.viewer,
    "/api/tags": Role.viewer,
    "/api/show": Role.viewer,
    "/api/ps": Role.viewer,
    "/openapi.json": Role.viewer,
    "/api/generate": Role.user,
    "/api/chat": Role.user,
    "/api/embed": Role.user,
    "/api/embeddings": Role.user,
    "/api/pull": Role.operator,
    "/api/push": Role.operator,
    "/api/create": Role.operator,
    "/api/copy": Role.operator,
    "/api/delete": Role.operator,
    "/api/cluster": Role.operator,
}
PREFIX_ROLES: tuple[tuple[str, Role], ...] = (
    ("/api/blobs/", Role.operator),
    ("/v1/", Role.user),
)
METRICS_PATH = "/metrics"
METRICS_POLICIES = ("open", "viewer")

# Methods that change state; with a role of operator or more they are audited.
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def required_role(path: str, metrics: str = "open") -> Role | None:
    """The least role that may call ``path``; None when the route is open."""
    if path == METRICS_PATH:
        return OPEN if metrics == "open" else Role.viewer
    if path in ROUTE_ROLES:
        return ROUTE_ROLES[path]
    for prefix, role in PREFIX_ROLES:
        if path.startswith(prefix):
            return role
    return Role.admin


def permits(role: Role, needed: Role | None) -> bool:
    return needed is None or role >= needed


def audited(method: str, needed: Role | None) -> bool:
    """Whether a call changes state worth an audit line (the operator routes)."""
    return method in WRITE_METHODS and needed is not None and needed >= Role.operator
