"""A real HTTP server on 127.0.0.1 that answers like the instance metadata service (IMDSv2)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from relion_spot import tags

TOKEN_TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"


@dataclass
class FakeImds:
    metadata: dict[str, str] = field(default_factory=dict)
    notice: dict[str, str] | None = None
    tokens_issued: int = 0
    requests: list[tuple[str, str, int]] = field(default_factory=list)
    """(method, path, status) of every request, in order."""
    url: str = ""
    _tokens: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def issue_token(self) -> str:
        with self._lock:
            self.tokens_issued += 1
            token = f"token-{self.tokens_issued}"
            self._tokens.add(token)
            return token

    def revoke_tokens(self) -> None:
        with self._lock:
            self._tokens.clear()

    def valid(self, token: str | None) -> bool:
        with self._lock:
            return token in self._tokens

    def polls(self) -> int:
        return sum(1 for m, p, _ in self.requests if m == "GET" and p.endswith("instance-action"))


def _handler(imds: FakeImds) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _reply(self, status: int, body: str = "") -> None:
            imds.requests.append((self.command, self.path, status))
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_PUT(self) -> None:
            if self.path != "/latest/api/token":
                self._reply(404)
            elif not self.headers.get(TOKEN_TTL_HEADER, "").isdigit():
                self._reply(400, "missing token TTL")
            else:
                self._reply(200, imds.issue_token())

        def do_GET(self) -> None:
            if not imds.valid(self.headers.get(TOKEN_HEADER)):
                self._reply(401)
                return
            prefix = "/latest/meta-data/"
            key = self.path[len(prefix) :] if self.path.startswith(prefix) else None
            if key == "spot/instance-action":
                if imds.notice is None:
                    self._reply(404)
                else:
                    self._reply(200, json.dumps(imds.notice))
            elif key in imds.metadata:
                self._reply(200, imds.metadata[key])
            else:
                self._reply(404)

    return Handler


@pytest.fixture
def imds() -> Iterator[FakeImds]:
    fake = FakeImds(
        metadata={
            "instance-id": "i-0abc123def4567890",
            "instance-type": "g5.xlarge",
            "placement/availability-zone": "us-east-1b",
            "placement/region": "us-east-1",
            f"tags/instance/{tags.NODE}": "gpu-3",
            f"tags/instance/{tags.CLUSTER}": "lab-1gpu",
        }
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()
