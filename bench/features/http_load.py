"""The load generator's HTTP client for the freshness runs."""
from __future__ import annotations

import asyncio


class HttpPool:
    """A lean HTTP/1.1 client for the load generator: `size` keep-alive connections, one request at a
    time on each. httpx cost this process ~3-6 ms CPU per request (0.3-0.6 of a core at 100 requests/s,
    measured), taken from the worker and broker it measures; ingest (uvicorn) answers with a
    Content-Length, which is all this reads."""

    def __init__(self, host: str, port: int, size: int):
        self.host, self.port, self.size = host, port, size
        self.idle: asyncio.Queue = asyncio.Queue()

    async def __aenter__(self) -> HttpPool:
        for _ in range(self.size):
            self.idle.put_nowait(await asyncio.open_connection(self.host, self.port))
        return self

    async def __aexit__(self, *exc) -> None:
        while not self.idle.empty():
            self.idle.get_nowait()[1].close()

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        reader, writer = await self.idle.get()
        try:
            writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            data = await reader.readexactly(length)
        except BaseException:
            writer.close()  # the connection's state is unknown: replace it
            self.idle.put_nowait(await asyncio.open_connection(self.host, self.port))
            raise
        self.idle.put_nowait((reader, writer))
        return status, data
