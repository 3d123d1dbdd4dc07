"""Who is calling: a bearer value and a store snapshot in, a ``Principal`` out. Pure.

A bearer value is, in this order: a static key from ``omax.serve.api-keys`` (admin,
as before roles existed), a key made by ``omax key create`` (its role), or a JWT
verified by the key ring and not revoked.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from omax.auth import Unauthorized
from omax.auth.roles import METRICS_POLICIES, Role
from omax.auth.store import AuthSnapshot, key_hash
from omax.auth.tokens import KeyRing
from omax.config import Settings
from omax.errors import ConfigError


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role
    kind: str  # "token", "key" or "static-key"


@dataclass(frozen=True)
class AuthConfig:
    """Everything a front door needs to authenticate, read once at start.

    Auth is on when ``required`` is set or any verifier is configured (a JWT secret,
    a public key, a static key). ``store_url`` is where keys and revocations live.
    """

    keyring: KeyRing
    static_keys: frozenset[str] = frozenset()  # SHA-256 of each static key
    store_url: str = ""
    metrics: str = "open"
    required: bool = False

    def __post_init__(self) -> None:
        if self.metrics not in METRICS_POLICIES:
            raise ValueError(f"metrics policy {self.metrics!r}: expected open or viewer")

    @property
    def enabled(self) -> bool:
        return self.required or bool(self.keyring) or bool(self.static_keys)

    @classmethod
    def build(
        cls,
        *,
        secret: str = "",
        accepted: Iterable[str] = (),
        public_key: str = "",
        static_keys: Iterable[str] = (),
        store_url: str = "",
        metrics: str = "open",
        required: bool = False,
    ) -> AuthConfig:
        return cls(
            keyring=KeyRing.build(secret, accepted, public_key),
            static_keys=frozenset(key_hash(k) for k in static_keys if k),
            store_url=store_url,
            metrics=metrics,
            required=required,
        )


def auth_config(cfg: Settings) -> AuthConfig:
    """The ``AuthConfig`` of validated settings. Raises ConfigError for an unusable key."""
    try:
        return AuthConfig.build(
            secret=cfg.jwt_secret,
            accepted=cfg.jwt_accepted,
            public_key=cfg.public_key,
            static_keys=cfg.api_keys,
            store_url=cfg.store_url,
            metrics=cfg.metrics_access,
            required=cfg.auth_required,
        )
    except (ValueError, OSError) as err:
        raise ConfigError(f"invalid configuration omax.auth.public-key: {err}") from None


def bearer_value(authorization: str) -> str:
    """The credential of an ``Authorization: Bearer <value>`` header; '' if none."""
    scheme, _, value = authorization.strip().partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def authenticate(bearer: str, config: AuthConfig, snapshot: AuthSnapshot) -> Principal:
    """The principal ``bearer`` stands for. Raises Unauthorized."""
    if not bearer:
        raise Unauthorized("unauthorized: send Authorization: Bearer <token or API key>")
    digest = key_hash(bearer)
    if digest in config.static_keys:
        return Principal("static-key", Role.admin, "static-key")
    record = snapshot.keys.get(digest)
    if record is not None:
        return Principal(record.name, record.role, "key")
    if bearer.count(".") != 2 or not config.keyring:
        raise Unauthorized("invalid API key")
    claims = config.keyring.verify(bearer)
    if claims.get("jti") in snapshot.revoked:
        raise Unauthorized("token revoked")
    return Principal(str(claims["sub"]), Role.parse(claims["role"]), "token")
