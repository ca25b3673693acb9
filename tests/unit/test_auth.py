"""API keys: hashed, scoped, constant-time compared; 401 without a key, 403 with a wrong one."""
from __future__ import annotations

import pytest
import httpx
from fastapi import Depends, FastAPI

from shared.auth import ApiKeys, hash_key, main


class Client:
    """Synchronous requests to an ASGI app (what fastapi.testclient does, without its deprecated path)."""

    def __init__(self, app: FastAPI):
        self.app = app

    def post(self, path: str, headers: dict | None = None) -> httpx.Response:
        import asyncio

        async def go() -> httpx.Response:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://t") as c:
                return await c.post(path, headers=headers)
        return asyncio.run(go())


def client(entries: list[str]) -> Client:
    keys = ApiKeys(entries)
    app = FastAPI()

    @app.post("/admin", dependencies=[Depends(keys.require("admin"))])
    def admin() -> dict:
        return {"ok": True}

    @app.post("/predict", dependencies=[Depends(keys.require("predict"))])
    def predict() -> dict:
        return {"ok": True}
    return Client(app)


def test_keys_are_required_with_their_scope():
    c = client([f"{hash_key('alpha')}:admin", f"{hash_key('beta')}:predict,events:write"])
    assert c.post("/admin").status_code == 401
    assert c.post("/admin").headers["www-authenticate"] == "Bearer"
    assert c.post("/admin", headers={"Authorization": "Bearer nope"}).status_code == 403
    assert c.post("/admin", headers={"Authorization": "Bearer beta"}).status_code == 403  # lacks the scope
    assert c.post("/admin", headers={"Authorization": "Bearer alpha"}).status_code == 200
    assert c.post("/admin", headers={"X-API-Key": "alpha"}).status_code == 200
    assert c.post("/predict", headers={"X-API-Key": "beta"}).status_code == 200
    assert c.post("/predict", headers={"X-API-Key": "alpha"}).status_code == 403


def test_without_keys_the_routes_are_open_and_bad_entries_are_refused():
    assert client([]).post("/admin").status_code == 200
    for bad in ["abc:admin", f"{hash_key('x')}:", f"{hash_key('x')}:root"]:
        with pytest.raises(ValueError):
            ApiKeys([bad])
    assert ApiKeys([f"{hash_key('k')}:admin"]).scopes_of("k") == {"admin"}
    assert ApiKeys([f"{hash_key('k')}:admin"]).scopes_of("K") is None


def test_the_command_prints_a_key_and_its_entry(capsys):
    assert main(["predict"]) == 0
    out = capsys.readouterr().out
    key = out.split("key:")[1].split()[0]
    assert f"entry: {hash_key(key)}:predict" in out


def test_the_openapi_document_declares_the_security_a_route_enforces():
    secured = client([f"{hash_key('alpha')}:admin"]).app.openapi()["paths"]["/admin"]["post"]
    assert {name for requirement in secured["security"] for name in requirement} == {"HTTPBearer", "APIKeyHeader"}
    assert "security" not in client([]).app.openapi()["paths"]["/admin"]["post"]
