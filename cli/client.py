"""HTTP calls to the services, with the errors an operator can act on (unreachable, refused key,
not found) turned into one message and exit status instead of a traceback."""
from __future__ import annotations

from typing import Any

import httpx
# typer 0.29 vendors click: its own ClickException is what it shows as a one-line error with an exit status
from typer._click.exceptions import ClickException

from cli.config import CliSettings


class CliError(ClickException):
    """A failure reported in one line ('Error: ...' on stderr) with exit status `code`."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.exit_code = code


def headers(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def detail(r: httpx.Response) -> str:
    """The service's own explanation of an error answer."""
    try:
        body = r.json()
    except ValueError:
        return r.text[:500]
    if isinstance(body, dict) and "detail" in body:
        d = body["detail"]
        extra = body.get("rejected")
        text = d if isinstance(d, str) else str(d)
        if extra:
            text += ": " + "; ".join(f"{p.get('field')}: {p.get('reason')}" for p in extra)
        return text
    return str(body)[:500]


class Api:
    """One service's HTTP API; `key` (else the configured one) goes with every request."""

    def __init__(self, settings: CliSettings, service: str, key: str | None = None):
        self.service, self.base = service, settings.url(service)
        self.client = httpx.Client(base_url=self.base, timeout=settings.timeout_s,
                                   headers=headers(key if key is not None else settings.key()))

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            r = self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise CliError(f"cannot reach {self.service} at {self.base}: {exc}", 2) from None
        if r.status_code == 401:
            raise CliError(f"{self.service}: an API key is required (--api-key or LOOPLINE_API_KEY)")
        if r.status_code == 403:
            raise CliError(f"{self.service}: the API key lacks the scope this needs")
        if r.status_code >= 400:
            raise CliError(f"{self.service} answered {r.status_code} to {method} {path}: {detail(r)}")
        return r

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.call("GET", path, **kwargs).json()

    def post(self, path: str, **kwargs: Any) -> Any:
        r = self.call("POST", path, **kwargs)
        return r.json() if r.content else None

    def delete(self, path: str) -> None:
        self.call("DELETE", path)
