"""JWTs: the keys that verify them and the one way ``omax token create`` signs them.

A token carries ``sub``, ``role`` and ``exp`` (all required), ``iat`` and ``jti``
(the id ``omax token revoke`` names), and a ``kid`` header naming the key that
signed it. A kid is derived from the key, so nobody has to invent or keep one in
step: the first 16 hex digits of the SHA-256 of an HS256 secret, or of a public
key's DER SubjectPublicKeyInfo (RS256, EdDSA). Each key is bound to its own
algorithms, so ``alg: none`` and algorithm confusion are refused by construction.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from omax.auth import Unauthorized
from omax.auth.roles import Role

LEEWAY = 10  # seconds of clock skew allowed on exp, nbf and iat
REQUIRED_CLAIMS = ("exp", "sub", "role")


@dataclass(frozen=True)
class VerifyKey:
    kid: str
    key: Any  # an HS256 secret (str) or a cryptography public key object
    algorithms: tuple[str, ...]


def secret_kid(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


def public_kid(public_key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()[:16]


def _algorithms(key: Any) -> tuple[str, ...]:
    from cryptography.hazmat.primitives.asymmetric import ed448, ed25519, rsa

    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return ("RS256",)
    if isinstance(
        key,
        ed25519.Ed25519PublicKey
        | ed448.Ed448PublicKey
        | ed25519.Ed25519PrivateKey
        | ed448.Ed448PrivateKey,
    ):
        return ("EdDSA",)
    raise ValueError(f"unsupported key type {type(key).__name__}: expected RSA or Ed25519/Ed448")


def _pem_bytes(pem_or_path: str) -> bytes:
    """PEM text as given, or the contents of the file it names."""
    if "-----BEGIN" in pem_or_path:
        return pem_or_path.encode()
    return Path(pem_or_path).expanduser().read_bytes()


def load_public_key(pem_or_path: str) -> VerifyKey:
    """A verify-only key from PEM text or a PEM file. ValueError/OSError if unusable."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_public_key(_pem_bytes(pem_or_path))
    return VerifyKey(public_kid(key), key, _algorithms(key))


class KeyRing:
    """The keys a front door verifies tokens with, by kid.

    ``default_kid`` verifies a token without a ``kid`` header (tokens made before kids
    existed): the current secret, never an accepted older one.
    """

    def __init__(self, keys: Iterable[VerifyKey], default_kid: str | None = None) -> None:
        self.keys = {k.kid: k for k in keys}
        self.default_kid = default_kid

    def __bool__(self) -> bool:
        return bool(self.keys)

    @classmethod
    def build(cls, secret: str = "", accepted: Iterable[str] = (), public_key: str = "") -> KeyRing:
        keys = [VerifyKey(secret_kid(s), s, ("HS256",)) for s in (secret, *accepted) if s]
        default = keys[0].kid if secret else None
        if public_key:
            pub = load_public_key(public_key)
            keys.append(pub)
            default = default or pub.kid
        return cls(keys, default)

    def verify(self, token: str, leeway: float = LEEWAY) -> dict[str, Any]:
        """The claims of a valid token, ``role`` checked. Raises Unauthorized."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized("invalid token") from None
        kid = header.get("kid", self.default_kid)
        key = self.keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise Unauthorized("token signed with an unknown key (kid)")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=list(key.algorithms),
                options={"require": list(REQUIRED_CLAIMS)},
                leeway=leeway,
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("token not yet valid") from None
        except jwt.MissingRequiredClaimError as err:
            raise Unauthorized(f"token lacks the {err.claim!r} claim") from None
        except jwt.PyJWTError:
            raise Unauthorized("invalid token") from None
        try:
            Role.parse(claims["role"])
        except ValueError:
            raise Unauthorized("token names an unknown role") from None
        return claims


def create_token(
    sub: str,
    role: Role,
    ttl: float,
    *,
    secret: str = "",
    private_key: str = "",
    now: float | None = None,
    extra: Mapping[str, Any] | None = None,
) -> tuple[str, dict[str, Any]]:
    """Sign a token for ``sub`` with ``role`` valid ``ttl`` seconds; ``(token, claims)``.

    Signs with the HS256 ``secret``, or with ``private_key`` (PEM text or file; RSA
    or Ed25519/Ed448) when given.
    """
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "sub": sub,
        "role": role.name,
        "iat": issued,
        "exp": issued + int(ttl),
        "jti": uuid.uuid4().hex,
        **(extra or {}),
    }
    if private_key:
        from cryptography.hazmat.primitives import serialization

        key: Any = serialization.load_pem_private_key(_pem_bytes(private_key), password=None)
        alg = _algorithms(key)[0]
        kid = public_kid(key.public_key())
    elif secret:
        key, alg, kid = secret, "HS256", secret_kid(secret)
    else:
        raise ValueError("no signing key: set omax.auth.jwt-secret or pass a private key")
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid}), claims
