"""API keys for the services' HTTP routes: stored hashed, compared in constant time, with scopes.

A service's settings hold entries "<sha256 hex of the key>:<scope>[,<scope>...]" (e.g. in
TRAINER_API_KEYS as a JSON list). Print the entry for a new key with

    python -m shared.auth admin          (prints a fresh key and its entry for the scope `admin`)

Without any entry configured the routes are open (the local demo); with entries, a request needs
`Authorization: Bearer <key>` (or `X-API-Key: <key>`): 401 without a key, 403 with a key that is
unknown or lacks the route's scope. /healthz, /readyz and /metrics never ask for one.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import sys
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from shared.http import Problem

SCOPES = frozenset({"events:write", "predict", "admin"})


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeys:
    """The configured keys (hashes with scopes)."""

    def __init__(self, entries: Iterable[str]):
        self._keys: list[tuple[bytes, frozenset[str]]] = []
        for entry in entries:
            digest, _, scopes = entry.strip().partition(":")
            wanted = frozenset(s.strip() for s in scopes.split(",") if s.strip())
            if len(digest) != 64 or not wanted or not wanted <= SCOPES:
                raise ValueError(f"an API key entry is '<sha256 hex>:<scopes>' with scopes from {sorted(SCOPES)}")
            self._keys.append((bytes.fromhex(digest), wanted))

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def scopes_of(self, key: str) -> frozenset[str] | None:
        """The key's scopes, or None for an unknown key (every entry is compared: constant time)."""
        presented = hashlib.sha256(key.encode()).digest()
        found: frozenset[str] | None = None
        for digest, scopes in self._keys:
            if hmac.compare_digest(presented, digest):
                found = scopes
        return found

    def require(self, scope: str) -> Callable[..., Awaitable[None]]:
        """A FastAPI dependency: the request must carry a key with `scope` (when keys are configured).
        With keys configured it declares both ways to send one (`HTTPBearer`, `APIKeyHeader`) as the
        route's OpenAPI security, so the document says what the route enforces; without keys, none.
        Coroutines: FastAPI runs a plain function dependency in its thread pool, a thread hop per request."""
        if scope not in SCOPES:
            raise ValueError(f"unknown scope {scope!r}")

        if not self.enabled:
            async def open_route() -> None:
                return None
            return open_route

        async def check(request: Request, _bearer: HTTPAuthorizationCredentials | None = Depends(_BEARER),
                        _header: str | None = Depends(_API_KEY_HEADER)) -> None:
            key = request.headers.get("x-api-key")
            auth = request.headers.get("authorization", "")
            if key is None and auth.lower().startswith("bearer "):
                key = auth[7:].strip()
            if not key:
                raise HTTPException(401, "an API key is required (Authorization: Bearer <key>)",
                                    headers={"WWW-Authenticate": "Bearer"})
            scopes = self.scopes_of(key)
            if scopes is None or scope not in scopes:
                raise HTTPException(403, f"this key does not grant '{scope}'")
        return check

    @property
    def responses(self) -> dict[int | str, dict[str, Any]]:
        """The OpenAPI responses of a route that requires a key (none when the routes are open)."""
        if not self.enabled:
            return {}
        return {401: {"model": Problem, "description": "No API key sent"},
                403: {"model": Problem, "description": "The key is unknown or lacks the route's scope"}}


# Documentation only (auto_error=False): `check` reads the headers itself, with the same rules.
_BEARER = HTTPBearer(auto_error=False, description="Authorization: Bearer <key>")
_API_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False, description="The key itself")


def main(argv: list[str] | None = None) -> int:
    scopes = (argv if argv is not None else sys.argv[1:]) or ["admin"]
    key = secrets.token_urlsafe(32)
    print(f"key:   {key}\nentry: {hash_key(key)}:{','.join(scopes)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
