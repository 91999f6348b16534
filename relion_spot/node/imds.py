"""A minimal IMDSv2 client: a session token from PUT, then GETs that carry it.

The base URL is configuration (``RELION_SPOT_IMDS_URL``), not code: the local cloud and the tests
serve the same paths from 127.0.0.1. Proxies from the environment are ignored on purpose; the
link-local address must never be sent through one.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable

IMDS_URL_ENV = "RELION_SPOT_IMDS_URL"
DEFAULT_IMDS_URL = "http://169.254.169.254"
TOKEN_TTL_SECONDS = 21600
TOKEN_REFRESH_MARGIN = 60
TIMEOUT_SECONDS = 2.0


class ImdsError(RuntimeError):
    """IMDS did not answer, or answered with something other than the data or a 404."""


class Imds:
    def __init__(
        self,
        base_url: str = DEFAULT_IMDS_URL,
        *,
        clock: Callable[[], float] = time.monotonic,
        timeout: float = TIMEOUT_SECONDS,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.clock = clock
        self.timeout = timeout
        self._token = ""
        self._token_expires = 0.0
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def token(self) -> str:
        if self._token and self.clock() < self._token_expires - TOKEN_REFRESH_MARGIN:
            return self._token
        request = urllib.request.Request(
            f"{self.base_url}/latest/api/token",
            method="PUT",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL_SECONDS)},
        )
        try:
            self._token = self._send(request, "token") or ""
        except _Unauthorized:
            raise ImdsError(f"{self.base_url}: token request refused") from None
        if not self._token:
            raise ImdsError(f"{self.base_url}: empty IMDSv2 token")
        self._token_expires = self.clock() + TOKEN_TTL_SECONDS
        return self._token

    def get(self, path: str) -> str | None:
        """The text at ``/latest/meta-data/<path>``, or None where IMDS has nothing (404)."""
        for attempt in range(2):
            request = urllib.request.Request(
                f"{self.base_url}/latest/meta-data/{path.lstrip('/')}",
                headers={"X-aws-ec2-metadata-token": self.token()},
            )
            try:
                return self._send(request, path)
            except _Unauthorized:
                # The token expired or IMDS restarted: one fresh token, then give up.
                self._token = ""
                if attempt:
                    raise ImdsError(f"{self.base_url}: token refused for {path}") from None
        return None  # not reached

    def _send(self, request: urllib.request.Request, what: str) -> str | None:
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return response.read().decode()
        except urllib.error.HTTPError as err:
            if err.code == 404:
                return None
            if err.code == 401:
                raise _Unauthorized from None
            raise ImdsError(f"{self.base_url}: HTTP {err.code} for {what}") from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise ImdsError(f"{self.base_url}: no answer for {what} ({reason})") from None


class _Unauthorized(Exception):
    pass
