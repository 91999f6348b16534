"""The instance metadata service of the embedded cloud: what 169.254.169.254 is on an instance.

One HTTP server for every node container of a cluster; each instance's metadata lives under its
own path prefix, so a node container is given ``RELION_SPOT_IMDS_URL=http://<host>:<port>/<id>``
and reads the same ``/latest/...`` paths it would read on EC2. IMDSv2 only: a token from
``PUT /latest/api/token`` must accompany every GET (401 otherwise), as with the launch template's
``HttpTokens=required``.

Answers come from moto (instance id, type, zone, region, the instance's tags, live) and from the
reconciler (``spot/instance-action``: 404 until the instance is reclaimed, then EC2's JSON).
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .listen import project_listener

log = logging.getLogger(__name__)

TOKEN_HEADER = "X-aws-ec2-metadata-token"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
MAX_TTL_SECONDS = 21600

NoticeLookup = Callable[[str], dict[str, str] | None]
"""Instance id -> its spot interruption notice, or None while it has none."""


class LocalImds:
    """Serve IMDSv2 for the instances of one moto region. ``start`` binds, ``stop`` closes."""

    def __init__(
        self,
        ec2: Any,
        *,
        notices: NoticeLookup,
        host: str = "127.0.0.1",
        interface: str | None = None,
    ) -> None:
        """``interface``: the cluster network's bridge, to which the service is confined
        (relion_spot.local.listen) besides ``host``; None listens on ``host`` alone."""
        self.ec2 = ec2
        self.notices = notices
        self.host = host
        self.interface = interface
        self._tokens: set[str] = set()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the metadata service is not started")
        return int(self._server.server_address[1])

    def url_for(self, instance_id: str) -> str:
        """The base URL a node container playing ``instance_id`` is given."""
        return f"http://{self.host}:{self.port}/{instance_id}"

    def start(self) -> None:
        if self._server is not None:
            return
        imds = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                imds._token_request(self)

            def do_GET(self) -> None:
                imds._get(self)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("%s " + format, self.address_string(), *args)

        server = ThreadingHTTPServer((self.host, 0), Handler, bind_and_activate=False)
        if self.interface is not None:
            server.socket.close()
            server.socket = project_listener(self.host, self.interface)
            host, port = server.socket.getsockname()[:2]
            server.server_address = (host, port)
            server.server_name, server.server_port = host, port
        else:
            server.server_bind()
            server.server_activate()
        self._server = server
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="local-imds", daemon=True
        )
        self._thread.start()
        log.info("instance metadata served at http://%s:%d/<instance-id>", self.host, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> LocalImds:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _token_request(self, request: BaseHTTPRequestHandler) -> None:
        instance_id, path = _split(request.path)
        if path != "latest/api/token" or not instance_id:
            _answer(request, HTTPStatus.NOT_FOUND)
            return
        ttl = request.headers.get(TTL_HEADER, "")
        if not ttl.isdigit() or not 1 <= int(ttl) <= MAX_TTL_SECONDS:
            _answer(request, HTTPStatus.BAD_REQUEST)
            return
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens.add(token)
        _answer(request, HTTPStatus.OK, token)

    def _get(self, request: BaseHTTPRequestHandler) -> None:
        with self._lock:
            authorized = request.headers.get(TOKEN_HEADER, "") in self._tokens
        if not authorized:
            _answer(request, HTTPStatus.UNAUTHORIZED)
            return
        instance_id, path = _split(request.path)
        prefix = "latest/meta-data/"
        if not instance_id or not path.startswith(prefix):
            _answer(request, HTTPStatus.NOT_FOUND)
            return
        try:
            body = self.metadata(instance_id, path[len(prefix) :])
        except Exception as err:  # moto unreachable: what a broken IMDS would answer
            log.warning("metadata for %s/%s failed: %r", instance_id, path, err)
            _answer(request, HTTPStatus.INTERNAL_SERVER_ERROR)
            return
        if body is None:
            _answer(request, HTTPStatus.NOT_FOUND)
        else:
            _answer(request, HTTPStatus.OK, body)

    def metadata(self, instance_id: str, item: str) -> str | None:
        """The text at ``/latest/meta-data/<item>`` for one instance, or None (a 404)."""
        if item == "spot/instance-action":
            notice = self.notices(instance_id)
            return json.dumps(notice) if notice else None
        found = self.ec2.describe_instances(
            Filters=[{"Name": "instance-id", "Values": [instance_id]}]
        )["Reservations"]
        if not found:
            return None
        instance = found[0]["Instances"][0]
        zone = instance["Placement"]["AvailabilityZone"]
        tags = {t["Key"]: t["Value"] for t in instance.get("Tags") or []}
        fixed = {
            "instance-id": instance_id,
            "instance-type": instance["InstanceType"],
            "placement/availability-zone": zone,
            "placement/region": self.ec2.meta.region_name,
            "services/partition": self.ec2.meta.partition,
            "identity-credentials/ec2/info": json.dumps(
                {"Code": "Success", "AccountId": found[0]["OwnerId"]}
            ),
            "tags/instance": "\n".join(sorted(tags)),
        }
        if item in fixed:
            return fixed[item]
        if item.startswith("tags/instance/"):
            return tags.get(item.removeprefix("tags/instance/"))
        return None


def _split(raw_path: str) -> tuple[str, str]:
    """``/<instance-id>/latest/...`` -> (instance id, ``latest/...``)."""
    instance_id, _, rest = raw_path.split("?", 1)[0].lstrip("/").partition("/")
    return (instance_id, rest) if instance_id.startswith("i-") else ("", "")


def _answer(request: BaseHTTPRequestHandler, status: HTTPStatus, body: str = "") -> None:
    data = body.encode()
    request.send_response(status)
    request.send_header("Content-Type", "text/plain")
    request.send_header("Content-Length", str(len(data)))
    request.end_headers()
    request.wfile.write(data)
