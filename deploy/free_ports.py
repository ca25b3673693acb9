"""Free loopback ports below the kernel's ephemeral range (32768+ on Linux): a port from bind(0)
could be taken by some client's outgoing connection before a server binds it. Never the same
port twice in one process. `python3 deploy/free_ports.py N` prints N distinct ports."""
from __future__ import annotations

import random
import socket
import sys

_given: set[int] = set()


def free_port() -> int:
    while True:
        port = random.randint(20_000, 32_000)
        if port in _given:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given.add(port)
        return port


if __name__ == "__main__":
    print(*(free_port() for _ in range(int(sys.argv[1]))))
