"""A tiny HTTP server on 127.0.0.1 that replays recorded provider responses and records the requests it got.

    with ReplayServer([load_reply("openai/tool_calls.json")]) as server:
        ChatOpenAI(base_url=server.url + "/v1", api_key="dummy", ...).invoke(...)
        server.requests[0].json["tools"]          # what the client sent

A reply file (tests/data/<provider>/*.json) holds ``status``, optional ``headers``, and the body as ``body``
(JSON) or ``body_text`` (anything else, e.g. an HTML error page); ``"cut": true`` announces the full length but
sends only the first half of the body and closes the connection (a stream cut mid-response). Replies are served
in order, one per request; a request beyond them gets a 599 and is recorded, so a test sees it. The server is
bounded: each connection times out after 10 s and the whole server stops when the ``with`` block ends.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

DATA = Path(__file__).parent / "data"


def load_reply(name: str, **overrides: Any) -> dict:
    reply = json.loads((DATA / name).read_text())
    reply.update(overrides)
    return reply


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body or b"null")


@dataclass
class ReplayServer:
    replies: list[dict]
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        replay = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 10  # a stuck client cannot hold the server

            def log_message(self, *args: Any) -> None:  # keep pytest's output clean
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                self._reply()

            def do_POST(self) -> None:  # noqa: N802
                self._reply()

            def _reply(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with replay._lock:
                    replay.requests.append(
                        Request(
                            self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body
                        )
                    )
                    index = len(replay.requests) - 1
                reply = replay.replies[index] if index < len(replay.replies) else None
                if reply is None:
                    reply = {"status": 599, "body": {"error": f"no recorded reply for request {index + 1}"}}
                if "body_text" in reply:
                    payload = reply["body_text"].encode()
                    content_type = "text/html; charset=utf-8"
                else:
                    payload = json.dumps(reply.get("body")).encode()
                    content_type = "application/json"
                self.send_response(reply.get("status", 200))
                headers = {"Content-Type": content_type, **reply.get("headers", {})}
                for key, value in headers.items():
                    self.send_header(key, str(value))
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("Connection", "close")
                self.end_headers()
                if reply.get("cut"):
                    self.wfile.write(payload[: len(payload) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(payload)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> ReplayServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
