"""Running ``anxiao serve`` from outside: a free loopback port, and waiting until it is ready.

Shared by the accuracy replay, the benchmarks and the tests, which all start
``serve`` as a subprocess and must not use it before ``/readyz`` says so.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any

import httpx

__all__ = ["free_port", "wait_ready"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(
    http: httpx.Client,
    process: subprocess.Popen[Any],
    *,
    timeout_s: float = 60.0,
    output: Callable[[], str] = lambda: "",
) -> None:
    """Until ``/readyz`` answers 200 (ingest subscribed, registry loaded, rules rebuilt).

    Raises ``RuntimeError`` when the process exits first (with the tail of
    ``output()``, e.g. its log) or after ``timeout_s`` seconds.
    """
    deadline_s = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"serve exited before it was ready: {output()[-2000:]}")
        try:
            if http.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline_s:
            raise RuntimeError(f"serve not ready within {timeout_s:g} s")
        time.sleep(0.05)
