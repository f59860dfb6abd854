"""A redis-server of the test's own, on a free loopback port, keeping nothing on disk.

Tests that need Redis start one rather than depend on (and write into) the machine's: they run
the same on a laptop without a Redis service, and nothing they leave behind lasts.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis

from edge.tests.sipp_harness import free_tcp_port

START_TIMEOUT = 10.0


@contextmanager
def redis_server() -> Iterator[str]:
    """Start redis-server; yield its URL (database 0); stop it. Skips (a failure under CI,
    see the root conftest.py) if redis-server is not installed."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    port = free_tcp_port("127.0.0.1")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        deadline = time.monotonic() + START_TIMEOUT
        while True:  # waiting for a process to listen, not for a timer of ours
            try:
                client.ping()
                break
            except (redis.RedisError, OSError):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {port} did not start") from None
                time.sleep(0.02)
        client.close()
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
