"""``omax token`` and ``omax key``: issue and revoke credentials for the front doors.

Tokens are signed here with ``omax.auth.jwt-secret`` (or ``--private-key``); keys and
revocations are written to the origin store (``omax.store.url``), where every front
door polls them, so a revocation needs no restart. See docs/security.md.
"""

from __future__ import annotations

import json

import click

from omax.auth.roles import ROLE_NAMES, Role
from omax.cli.main import cli
from omax.config import settings
from omax.config_values import parse_duration

_ROLE = click.Choice(ROLE_NAMES)


def parse_ttl(text: str) -> float:
    """Seconds of ``30d``, ``12h``, ``90m``, ``1h30m`` or a number; ValueError if not > 0."""
    text = text.strip()
    seconds = float(text[:-1]) * 86400 if text.endswith("d") else parse_duration(text)
    if seconds <= 0:
        raise ValueError(text)
    return seconds


def _store():
    from omax.auth.store import AuthStore

    return AuthStore(settings().store_url)


@cli.group()
def token() -> None:
    """Create and revoke JWTs for the front doors."""


@token.command("create")
@click.option("--sub", required=True, help="Who the token is for (the audit log's 'who').")
@click.option("--role", type=_ROLE, required=True, help="What the token may do.")
@click.option("--ttl", default="30d", show_default=True, help="Lifetime: 30d, 12h, 90m, ...")
@click.option(
    "--private-key",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Sign RS256/EdDSA with this PEM private key instead of omax.auth.jwt-secret.",
)
def token_create(sub: str, role: str, ttl: str, private_key: str | None) -> None:
    """Print a signed token. Its id (jti) goes to stderr, for `omax token revoke`."""
    from omax.auth.tokens import create_token

    try:
        seconds = parse_ttl(ttl)
    except ValueError:
        raise click.BadParameter(f"{ttl!r}: expected a duration such as 30d or 12h") from None
    secret = settings().jwt_secret
    if not secret and not private_key:
        raise click.ClickException(
            "no signing key: set omax.auth.jwt-secret (DASK_OMAX__AUTH__JWT_SECRET) "
            "or pass --private-key"
        )
    value, claims = create_token(
        sub, Role[role], seconds, secret=secret, private_key=private_key or ""
    )
    click.echo(value)
    click.echo(f"jti {claims['jti']} expires at {claims['exp']} (unix time)", err=True)


@token.command("revoke")
@click.argument("jti")
def token_revoke(jti: str) -> None:
    """Revoke a token by its id (JTI), or pass the token itself.

    Every front door refuses it from its next read of the store's revocations.
    """
    import jwt

    exp = None
    if jti.count(".") == 2:  # a whole token: take its id and expiry (no need to verify)
        try:
            claims = jwt.decode(jti, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise click.BadParameter("not a token and not a token id") from None
        if not claims.get("jti"):
            raise click.ClickException("this token has no jti claim: it cannot be revoked")
        jti, exp = str(claims["jti"]), claims.get("exp")
    _store().revoke_token(jti, exp)
    click.echo(f"revoked token {jti}")


@cli.group()
def key() -> None:
    """Create, list and revoke API keys (for clients that send a fixed bearer value)."""


@key.command("create")
@click.option("--name", required=True, help="A unique name for the key (who holds it).")
@click.option("--role", type=_ROLE, required=True, help="What the key may do.")
def key_create(name: str, role: str) -> None:
    """Print a new key. It is shown only this once; the store keeps its hash."""
    click.echo(_store().create_key(name, Role[role]))


@key.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def key_list(as_json: bool) -> None:
    """Names, roles and creation times of the keys (never the keys)."""
    keys = _store().list_keys()
    if as_json:
        click.echo(json.dumps(keys, indent=1))
        return
    click.echo(f"{'NAME':<24} {'ROLE':<9} CREATED")
    for k in keys:
        click.echo(f"{k['name']:<24} {k['role']:<9} {k['created']}")


@key.command("revoke")
@click.argument("name")
def key_revoke(name: str) -> None:
    """Revoke the key named NAME; every front door refuses it from its next read of
    the store's keys."""
    _store().revoke_key(name)
    click.echo(f"revoked key {name}")
