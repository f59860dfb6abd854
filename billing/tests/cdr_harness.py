"""Real processes for the CDR pipeline's tests: a Redis server of the test's own (never the
machine's), and a TCP proxy that can cut a connection to PostgreSQL."""

from __future__ import annotations

import contextlib
import selectors
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

from edge.tests.sipp_harness import free_tcp_port


class RedisServer:
    """``redis-server --port N --save ''`` on loopback; `stop` and `start` again on the same
    port (it comes back empty, as the machine's Redis would: it keeps nothing on disk)."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self.binary = binary
        self.directory = directory
        self.port = free_tcp_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock,
            ):
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return self
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target; `close` drops every connection and refuses new
    ones (the database unreachable), `open` accepts again."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_tcp_port()
        self._listener: socket.socket | None = None
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def open(self) -> TcpProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.setblocking(False)
        self._listener = listener
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        with self._lock:
            for a, b in self._pairs:
                a.close()
                b.close()
            self._pairs.clear()
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        assert self._listener is not None
        selector.register(self._listener, selectors.EVENT_READ, None)
        while not self._stop.is_set():
            for key, _ in selector.select(0.1):
                if key.data is None:
                    with contextlib.suppress(BlockingIOError):
                        client, _ = self._listener.accept()
                        try:
                            upstream = socket.create_connection(self.target, timeout=5)
                        except OSError:
                            client.close()
                            continue
                        with self._lock:
                            self._pairs.append((client, upstream))
                        selector.register(client, selectors.EVENT_READ, upstream)
                        selector.register(upstream, selectors.EVENT_READ, client)
                    continue
                source, sink = key.fileobj, key.data
                try:
                    data = source.recv(65536)  # type: ignore[union-attr]
                    if data:
                        sink.sendall(data)
                        continue
                except OSError:
                    pass
                for sock in (source, sink):
                    with contextlib.suppress(KeyError, ValueError):
                        selector.unregister(sock)
                    sock.close()  # type: ignore[union-attr]
        selector.close()
