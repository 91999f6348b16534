"""A small benchmark-shaped tarball and a loopback HTTP server that honours Range and If-Range."""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

STACKS = ("Particles/Micrographs/mic001.mrcs", "Particles/Micrographs/mic002.mrcs")
PER_STACK = 12
BOX = 32
FILES = len(STACKS) + 2  # stacks, the particles STAR, the reference map


def build_dataset(root: Path) -> None:
    """RELION's benchmark layout in miniature: noisy stacks (so gzip cannot shrink them much)."""
    rng = np.random.default_rng(0)
    names = []
    for stack in STACKS:
        path = root / stack
        path.parent.mkdir(parents=True, exist_ok=True)
        with mrcfile.new(path) as mrc:
            mrc.set_data(rng.normal(size=(PER_STACK, BOX, BOX)).astype(np.float32))
            mrc.set_image_stack()
            mrc.voxel_size = 1.34
        names += [f"{i:06d}@{stack}" for i in range(1, PER_STACK + 1)]
    particles = pd.DataFrame(
        {
            "rlnImageName": names,
            "rlnDefocusU": 20000.0,
            "rlnDefocusV": 20000.0,
            "rlnVoltage": 300.0,
            "rlnMagnification": 10000.0,
            "rlnDetectorPixelSize": 1.34,
        }
    )
    starfile.write(particles, root / "Particles/shiny_2sets.star")
    with mrcfile.new(root / "emd_2660.map") as mrc:
        mrc.set_data(rng.normal(size=(BOX, BOX, BOX)).astype(np.float32))
        mrc.voxel_size = 1.34


def tarball(root: Path, out: Path, top: str = "relion_benchmark") -> bytes:
    with tarfile.open(out, "w:gz") as tar:
        tar.add(root, arcname=top)
    return out.read_bytes()


@pytest.fixture(scope="session")
def benchmark_tar(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    base = tmp_path_factory.mktemp("benchmark")
    build_dataset(base / "src")
    return tarball(base / "src", base / "relion_benchmark.tar.gz")


@dataclass
class Served:
    """What the loopback server holds and what it did; tests change ``body`` and ``cut_after``."""

    body: bytes = b""
    etag: str = '"v1"'
    ranges: bool = True
    cut_after: int | None = None  # send this many body bytes of the next reply, then hang up
    throttle_s: float = 0.0  # pause after each 4 KiB sent, so a client can be stopped midway
    requests: list[dict[str, str | None]] = field(default_factory=list)
    bytes_sent: int = 0
    sent: list[int] = field(default_factory=list)  # body bytes per request, in request order
    url: str = ""

    def set_body(self, body: bytes) -> None:
        self.body = body
        self.etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'


def _handler(served: Served) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            range_header = self.headers.get("Range")
            if_range = self.headers.get("If-Range")
            served.requests.append({"range": range_header, "if_range": if_range})
            served.sent.append(0)
            index = len(served.sent) - 1
            body, start, status = served.body, 0, 200
            match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
            if served.ranges and match and (if_range is None or if_range == served.etag):
                start = int(match.group(1))
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = 206
            payload = body[start:]
            self.send_response(status)
            self.send_header("ETag", served.etag)
            self.send_header("Content-Length", str(len(payload)))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.end_headers()
            if served.cut_after is not None:
                payload, served.cut_after = payload[: served.cut_after], None
                self.close_connection = True
            step = 4096 if served.throttle_s else len(payload) or 1
            try:
                for at in range(0, len(payload), step):
                    self.wfile.write(payload[at : at + step])
                    self.wfile.flush()
                    served.bytes_sent += len(payload[at : at + step])
                    served.sent[index] += len(payload[at : at + step])
                    time.sleep(served.throttle_s)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

    return Handler


@pytest.fixture
def server(benchmark_tar: bytes) -> Iterator[Served]:
    served = Served()
    served.set_body(benchmark_tar)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(served))
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    served.url = f"http://127.0.0.1:{httpd.server_address[1]}/pub/relion_benchmark.tar.gz"
    try:
        yield served
    finally:
        httpd.shutdown()
        httpd.server_close()


def evil_tarball(member: tarfile.TarInfo, payload: bytes = b"x") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        if member.isreg():
            member.size = len(payload)
            tar.addfile(member, io.BytesIO(payload))
        else:
            tar.addfile(member)
    return buffer.getvalue()
