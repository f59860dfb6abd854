"""A stand-in for an edge's control API (GET /calls, DELETE /calls/{id}, GET /health) over real
HTTP on loopback, for the live board's web-side tests. The real control API is tested in
edge/tests/test_runtime_control.py; the end-to-end browser test runs a real edge."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs


class FakeEdge:
    def __init__(self, token: str) -> None:
        self.token = token
        self.calls: list[dict[str, Any]] = []
        self.deleted: list[str] = []
        self.reasons: dict[str, str] = {}  # call id -> the hang-up's ?reason=
        self.requests: list[tuple[str, str]] = []
        self.port = 0

    def add_call(self, call_id: str, trunk: Any, **fields: Any) -> dict[str, Any]:
        call = {
            "call_id": call_id,
            "trunk_id": trunk.pk,
            "customer_id": trunk.customer_id,
            "direction": "outbound",
            "caller": "+14155550100",
            "callee": "+442071234567",
            "state": "answered",
            "setup_at": "2026-12-04T20:00:00Z",
            "answer_at": "2026-12-04T20:00:01Z",
            **fields,
        }
        self.calls.append(call)
        return call


@contextmanager
def fake_edge(token: str) -> Iterator[FakeEdge]:
    edge = FakeEdge(token)

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self, status: int, body: Any = None) -> None:
            data = b"" if body is None else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _authorized(self) -> bool:
            edge.requests.append((self.command, self.path))
            if self.headers.get("Authorization") != f"Bearer {edge.token}":
                self._answer(401, {"error": "missing or invalid bearer token"})
                return False
            return True

        def do_GET(self) -> None:
            if not self._authorized():
                return
            if self.path == "/calls":
                self._answer(200, {"calls": edge.calls})
            else:
                self._answer(200, {"status": "ok", "config_version": 1})

        def do_DELETE(self) -> None:
            if not self._authorized():
                return
            path, _, query = self.path.partition("?")
            call_id = path.removeprefix("/calls/")
            if not any(c["call_id"] == call_id for c in edge.calls):
                self._answer(404, {"error": f"no call {call_id!r}"})
                return
            edge.deleted.append(call_id)
            edge.reasons[call_id] = parse_qs(query).get("reason", ["operator_hangup"])[-1]
            edge.calls = [c for c in edge.calls if c["call_id"] != call_id]
            self._answer(204)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    edge.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield edge
    finally:
        server.shutdown()
        server.server_close()
