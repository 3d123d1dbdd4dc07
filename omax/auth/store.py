"""API keys and revoked token ids, kept in the origin store beside the catalog.

    <store>/auth/keys.json     {"keys": [{"name", "role", "sha256", "created"}]}
    <store>/auth/revoked.json  {"tokens": {jti: exp}}

A key is shown once when created; only the SHA-256 of it is stored. Each file is
replaced whole (a local store: temporary file and rename; object stores: one PUT),
so a reader sees the old document or the new one. Writes come from the ``omax
key``/``omax token`` commands of an administrator, one at a time: two run at the
same instant may lose one change (the command says what it wrote; run it again).
Revoked ids are dropped once their token has expired anyway.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from omax.auth.roles import Role
from omax.errors import InvalidRequest, StoreError
from omax.sharding.blobs import open_fs

KEY_PREFIX = "omax_"


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class KeyRecord:
    name: str
    role: Role
    created: str


@dataclass(frozen=True)
class AuthSnapshot:
    """What the store says at one moment: key hash -> record, and revoked token ids."""

    keys: dict[str, KeyRecord] = field(default_factory=dict)
    revoked: frozenset[str] = frozenset()


class AuthStore:
    """The ``auth/`` documents under a store URL (local path or fsspec URL)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.fs, root = open_fs(url)
        self.dir = f"{root}/auth"
        protos = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        self._local = "file" in protos or "local" in protos

    def _read(self, name: str) -> dict[str, Any]:
        try:
            data = self.fs.cat_file(f"{self.dir}/{name}")
        except FileNotFoundError:
            return {}
        except OSError as err:
            raise StoreError(f"cannot read {self.dir}/{name}: {err}") from err
        try:
            doc = json.loads(data)
        except ValueError as err:
            raise StoreError(f"{self.dir}/{name} is not JSON: {err}") from err
        return doc if isinstance(doc, dict) else {}

    def _write(self, name: str, doc: dict[str, Any]) -> None:
        data = json.dumps(doc, indent=1, sort_keys=True).encode()
        path = f"{self.dir}/{name}"
        try:
            if self._local:
                from omax.sharding.durable import write_atomic

                self.fs.makedirs(self.dir, exist_ok=True)
                write_atomic(path, data)
            else:
                self.fs.pipe_file(path, data)
        except OSError as err:
            raise StoreError(f"cannot write {path}: {err}") from err

    def snapshot(self) -> AuthSnapshot:
        keys: dict[str, KeyRecord] = {}
        for item in self._read("keys.json").get("keys", []):
            try:
                keys[item["sha256"]] = KeyRecord(
                    item["name"], Role.parse(item["role"]), item.get("created", "")
                )
            except (KeyError, TypeError, ValueError):
                continue  # a hand-edited entry we cannot use grants nothing
        revoked = self._read("revoked.json").get("tokens", {})
        return AuthSnapshot(keys, frozenset(revoked) if isinstance(revoked, dict) else frozenset())

    def list_keys(self) -> list[dict[str, str]]:
        """Name, role and creation time of each key; never the key or its hash."""
        return [
            {"name": k["name"], "role": k["role"], "created": k.get("created", "")}
            for k in self._read("keys.json").get("keys", [])
        ]

    def create_key(self, name: str, role: Role) -> str:
        """Store a new key's hash under ``name`` and return the key (shown once)."""
        doc = self._read("keys.json")
        entries = doc.get("keys", [])
        if any(k.get("name") == name for k in entries):
            raise InvalidRequest(f"a key named {name!r} exists: revoke it first")
        key = new_key()
        created = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        entries.append(
            {"name": name, "role": role.name, "sha256": key_hash(key), "created": created}
        )
        self._write("keys.json", {"keys": entries})
        return key

    def revoke_key(self, name: str) -> None:
        entries = self._read("keys.json").get("keys", [])
        kept = [k for k in entries if k.get("name") != name]
        if len(kept) == len(entries):
            raise InvalidRequest(f"no key named {name!r}")
        self._write("keys.json", {"keys": kept})

    def revoke_token(self, jti: str, exp: float | None = None, now: float | None = None) -> None:
        """Add ``jti`` to the revocation list. Ids of tokens past their ``exp`` are
        dropped; one revoked without its ``exp`` (null) is kept for good."""
        now = time.time() if now is None else now
        tokens = self._read("revoked.json").get("tokens", {})
        tokens = {j: e for j, e in tokens.items() if e is None or (_number(e) and e > now)}
        tokens[jti] = None if exp is None else int(exp)
        self._write("revoked.json", {"tokens": tokens})
