"""Resumable download of one large object into ``<archive>.part``, renamed when complete.

A sidecar ``<archive>.part.json`` records where the partial bytes came from (source, total size,
ETag/Last-Modified), so a later run continues only a download of the same object; HTTP resumes
with ``Range`` + ``If-Range``, S3 with a ranged GetObject conditioned on the ETag. A server that
ignores the range, or an object that changed, restarts from zero rather than splicing files.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .errors import BadInput, StagingError
from .report import Reporter, human_bytes, log

CHUNK = 1 << 20
HTTP_TIMEOUT_S = 60.0
_CONTENT_RANGE = re.compile(r"^bytes (?:(\d+)-(\d+)|\*)/(\d+|\*)$")
_S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class Source:
    url: str
    kind: str  # "http" or "s3"
    bucket: str = ""
    key: str = ""

    @property
    def filename(self) -> str:
        path = self.key if self.kind == "s3" else urlparse(self.url).path
        return path.rstrip("/").rsplit("/", 1)[-1]


def parse_source(text: str) -> Source:
    accepted = "give an http(s):// URL or s3://bucket/key naming the tarball"
    parsed = urlparse(text)
    if parsed.scheme in ("http", "https"):
        if not parsed.netloc or not parsed.path.rstrip("/"):
            raise BadInput("--source", text, accepted + " (host and file path required)")
        return Source(url=text, kind="http")
    if parsed.scheme == "s3":
        key = parsed.path.lstrip("/")
        if not _S3_BUCKET.match(parsed.netloc) or not key or key.endswith("/"):
            raise BadInput("--source", text, accepted + " (bucket and object key required)")
        return Source(url=text, kind="s3", bucket=parsed.netloc, key=key)
    raise BadInput("--source", text, accepted)


class _Interrupted(Exception):
    """A transfer that stopped early for a reason worth retrying from where it got to."""


@dataclass
class _Opened:
    total: int
    validator: str
    start: int  # where the body begins in the object; 0 means a fresh full body
    chunks: Iterator[bytes]
    close: Callable[[], None]


def _sidecar(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def _read_sidecar(part: Path) -> dict[str, Any]:
    try:
        data = json.loads(_sidecar(part).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_sidecar(part: Path, source: Source, total: int, validator: str) -> None:
    tmp = _sidecar(part).with_suffix(".tmp")
    tmp.write_text(json.dumps({"source": source.url, "total": total, "validator": validator}))
    os.replace(tmp, _sidecar(part))


class _Http:
    def __init__(self, source: Source) -> None:
        self.source = source

    def open(self, offset: int, validator: str) -> _Opened | int:
        """The body from ``offset``, or the object's total size when nothing is left to send."""
        request = urllib.request.Request(self.source.url)
        if offset:
            request.add_header("Range", f"bytes={offset}-")
            if validator:
                request.add_header("If-Range", validator)
        try:
            response = urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S)
        except urllib.error.HTTPError as error:
            if error.code == 416:
                match = _CONTENT_RANGE.match(error.headers.get("Content-Range", ""))
                if match and match.group(3) not in (None, "*"):
                    return int(match.group(3))
                raise _Interrupted("range not satisfiable and no size given") from error
            if 500 <= error.code < 600 or error.code == 429:
                raise _Interrupted(f"HTTP {error.code}") from error
            raise StagingError(f"{self.source.url}: HTTP {error.code} {error.reason}") from error
        except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
            raise _Interrupted(f"{self.source.url}: {error}") from error
        headers = response.headers
        etag = headers.get("ETag") or ""
        # If-Range needs a strong validator: a weak ETag falls back to Last-Modified.
        strong = etag if etag and not etag.startswith("W/") else ""
        new_validator = strong or headers.get("Last-Modified") or ""
        if response.status == 206:
            match = _CONTENT_RANGE.match(headers.get("Content-Range", ""))
            if not match or match.group(1) is None or match.group(3) == "*":
                response.close()
                raise StagingError(f"{self.source.url}: unusable Content-Range in a 206 reply")
            start, total = int(match.group(1)), int(match.group(3))
        else:
            length = headers.get("Content-Length")
            if length is None:
                response.close()
                raise StagingError(
                    f"{self.source.url}: the server gives no Content-Length, so the download "
                    "could be neither resumed nor checked for size"
                )
            start, total = 0, int(length)

        def chunks() -> Iterator[bytes]:
            while True:
                try:
                    block = response.read1(CHUNK)  # what has arrived: progress stays live
                except (OSError, http.client.HTTPException) as error:
                    raise _Interrupted(f"connection lost: {error!r}") from error
                if not block:
                    return
                yield block

        return _Opened(total, new_validator, start, chunks(), response.close)


class _S3:
    def __init__(self, source: Source, client: Any = None) -> None:
        import boto3

        self.source = source
        self.client = client or boto3.client("s3")

    def open(self, offset: int, validator: str) -> _Opened | int:
        from botocore.exceptions import BotoCoreError, ClientError

        where = {"Bucket": self.source.bucket, "Key": self.source.key}
        try:
            head = self.client.head_object(**where)
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchKey", "NoSuchBucket", "403", "AccessDenied"):
                raise StagingError(f"{self.source.url}: cannot read the object ({code})") from error
            raise _Interrupted(f"{self.source.url}: {error}") from error
        except BotoCoreError as error:
            raise _Interrupted(f"{self.source.url}: {error}") from error
        total, etag = int(head["ContentLength"]), str(head.get("ETag", ""))
        start = offset if (validator == etag and offset) else 0
        if start >= total and start:
            return total
        try:
            reply = self.client.get_object(**where, Range=f"bytes={start}-", IfMatch=etag)
        except (ClientError, BotoCoreError) as error:
            raise _Interrupted(f"{self.source.url}: {error}") from error
        body = reply["Body"]

        def chunks() -> Iterator[bytes]:
            while True:
                try:
                    block = body.read(CHUNK)
                except (OSError, BotoCoreError) as error:
                    raise _Interrupted(f"connection lost: {error!r}") from error
                if not block:
                    return
                yield block

        return _Opened(total, etag, start, chunks(), body.close)


def download(
    source: Source,
    archive: Path,
    reporter: Reporter,
    *,
    retries: int = 5,
    backoff_s: float = 2.0,
    s3_client: Any = None,
) -> int:
    """Bring ``source`` to ``archive`` (via ``archive.part``); return its verified size.

    A complete ``archive`` left by an earlier run is kept without contacting the source.
    """
    part = archive.with_name(archive.name + ".part")
    if archive.exists():
        recorded = _read_sidecar(part)
        size = archive.stat().st_size
        if recorded.get("source") == source.url and recorded.get("total") == size:
            log(f"{archive.name}: already downloaded ({human_bytes(size)}), not fetching again")
            return size
        archive.unlink()  # not known to be ours and complete: fetch it properly
    opener = _S3(source, s3_client) if source.kind == "s3" else _Http(source)
    recorded = _read_sidecar(part)
    if part.exists() and recorded.get("source") != source.url:
        log(f"{part.name}: partial download of another source; starting over")
        part.unlink()
    attempt = 0
    while True:
        offset = part.stat().st_size if part.exists() else 0
        try:
            opened = opener.open(offset, str(recorded.get("validator", "")) if offset else "")
            if isinstance(opened, int):
                total = opened
                _write_sidecar(part, source, total, str(recorded.get("validator", "")))
                if offset != total:
                    log(
                        f"{part.name}: {human_bytes(offset)} held but the source has "
                        f"{human_bytes(total)}; starting over"
                    )
                    part.unlink()
                    recorded = {}
                    continue
            else:
                total = opened.total
                if opened.start not in (0, offset):
                    opened.close()
                    raise StagingError(
                        f"{source.url}: asked for bytes from {offset}, the source answered from "
                        f"{opened.start}"
                    )
                if opened.start != offset:
                    if offset:
                        log(
                            f"{part.name}: the source did not continue at {offset} "
                            "(changed, or no range support); starting over"
                        )
                    mode = "wb"
                else:
                    mode = "ab"
                _write_sidecar(part, source, total, opened.validator)
                recorded = _read_sidecar(part)
                reporter.start(f"download {source.filename}", total, opened.start)
                try:
                    with open(part, mode) as out:
                        for block in opened.chunks:
                            out.write(block)
                            reporter.advance(len(block))
                finally:
                    opened.close()
                    reporter.finish()
            size = part.stat().st_size if part.exists() else 0
            if size < total:
                raise _Interrupted(f"stopped at {size} of {total} bytes")
            if size > total:
                part.unlink()
                raise StagingError(
                    f"{source.url}: received {size} bytes but the source says {total}; "
                    "the partial file was removed, run again"
                )
            os.replace(part, archive)
            log(f"{archive.name}: {human_bytes(total)} received, size matches the source")
            return total
        except OSError as error:
            raise StagingError(f"writing {part} failed: {error}") from error
        except _Interrupted as why:
            if part.exists() and part.stat().st_size > offset:
                attempt = 0  # it moved forward: count failures in a row, not in total
            attempt += 1
            if attempt > retries:
                raise StagingError(
                    f"{source.url}: download interrupted ({why}); {part.name} keeps what arrived "
                    "and the next run continues from there"
                ) from why
            wait = min(backoff_s * 2 ** (attempt - 1), 60.0)
            log(f"download interrupted ({why}); retry {attempt} of {retries} in {wait:.0f}s")
            time.sleep(wait)


def sha256_of(path: Path, reporter: Reporter) -> str:
    digest = hashlib.sha256()
    reporter.start(f"sha256 {path.name}", path.stat().st_size)
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
            reporter.advance(len(block))
    reporter.finish()
    return digest.hexdigest()
