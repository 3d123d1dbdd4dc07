"""Authentication and authorisation of the front door.

    roles.py    the four roles and the route table (route -> least role), pure
    tokens.py   JWT signing and verification keys (HS256 secrets, RS256/EdDSA public keys)
    store.py    API keys (their hashes) and revoked token ids in the origin store
    policy.py   ``AuthConfig`` and ``authenticate``: bearer value + snapshot -> Principal

Errors (both ``OmaxError``; the middleware answers them in the path's error shape):

    Unauthorized   401: no credentials, or credentials that do not verify
    Forbidden      403: a valid principal whose role may not use the route
"""

from __future__ import annotations

from omax.errors import OmaxError


class Unauthorized(OmaxError):
    """No credentials, or a bad, expired or revoked token or key."""

    status = 401


class Forbidden(OmaxError):
    """The caller's role may not use this route."""

    status = 403
