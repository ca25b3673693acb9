"""The trainer's admin routes: the key is checked before the body is read, and any invalid body, even
one that is not UTF-8, is a documented 422 (found by schemathesis: a 500)."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import httpx
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from services.trainer.api import build_router
from shared.auth import ApiKeys, hash_key


class FakeTrainer:
    def __init__(self):
        self.restaged: list[tuple[str, int, str]] = []
        self.registry = SimpleNamespace(get=lambda name, version: SimpleNamespace(
            model_dump=lambda mode: {"name": name, "version": version}) if (name, version) == ("lr", 1) else None)

    def restage(self, name, version, stage):
        self.restaged.append((name, version, stage))
        return []


def post(app: FastAPI, path: str, content: bytes, headers: dict | None = None) -> httpx.Response:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            return await c.post(path, content=content, headers={"Content-Type": "application/json", **(headers or {})})
    return asyncio.run(go())


def test_stage_checks_the_key_first_and_refuses_any_invalid_body_with_422():
    trainer = FakeTrainer()
    stream = SimpleNamespace(emit=lambda records: asyncio.sleep(0), health=lambda: {"ready": True, "checks": {}})
    app = FastAPI()
    app.include_router(build_router(stream, trainer, SimpleNamespace(registry=CollectorRegistry()),
                                    ApiKeys([f"{hash_key('k')}:admin"])))
    auth = {"Authorization": "Bearer k"}
    for body in (b"\xff", b"{", b'{"stage": "champion"}', b"[]", b""):
        assert post(app, "/v1/models/lr/1/stage", body).status_code == 401
        assert post(app, "/v1/models/lr/1/stage", body, {"X-API-Key": "nope"}).status_code == 403
        r = post(app, "/v1/models/lr/1/stage", body, auth)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][0] == "body", (body, r.text)
    assert post(app, "/v1/models/lr/x/stage", b'{"stage": "shadow"}', auth).status_code == 422
    assert post(app, "/v1/models/lr/2/stage", b'{"stage": "shadow"}', auth).status_code == 404
    r = post(app, "/v1/models/lr/1/stage", b'{"stage": "shadow"}', auth)
    assert r.status_code == 200 and trainer.restaged == [("lr", 1, "shadow")]
    doc = app.openapi()["paths"]["/v1/models/{name}/{version}/stage"]["post"]
    assert doc["requestBody"]["content"]["application/json"]["schema"]["required"] == ["stage"]
    assert {"401", "403", "404", "409", "422"} <= doc["responses"].keys()
    assert {"HTTPBearer", "APIKeyHeader"} == {name for req in doc["security"] for name in req}
