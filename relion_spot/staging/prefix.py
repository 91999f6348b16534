"""A data set kept in S3 as its files under a prefix, copied to a local directory in parallel.

What a Class3D with ``--dataset s3://bucket/prefix/`` runs on its GPU node before RELION
(relion_spot.jobs.dataset): every object under the prefix is listed (ListObjectsV2, boto3's
paginator) and fetched through one boto3 transfer manager (parallel ranged GETs within a large
object, several objects at a time; s3transfer writes each to a temporary name and renames it
into place), so the copy
runs at what the instance's network and S3 allow rather than one stream's rate. No unpacking
follows: the files arrive as they are. A key that would leave the directory (an empty, ``.`` or
``..`` part) or that names a folder marker is refused or skipped; nothing else is trusted about
the listing either: each file's size is checked against it afterwards.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from boto3.exceptions import Boto3Error
from botocore.exceptions import BotoCoreError, ClientError

from .errors import StagingError
from .report import Reporter

WORKERS = 16
"""Requests in flight at once, over all objects (whole small objects, 64 MiB parts of large
ones), through one transfer manager."""
CONNECTIONS = 2 * WORKERS
"""The S3 client's connection pool: more than the requests in flight, so none waits for one."""
PART_BYTES = 64 * 2**20
"""Ranged GETs of this size for an object larger than it (the price model's part size)."""
MAX_OBJECTS = 1_000_000


def listed(client: Any, bucket: str, prefix: str) -> Iterator[tuple[str, int]]:
    """(path under the prefix, size) of every object, folder markers skipped."""
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            key = item["Key"]
            if key.endswith("/"):
                continue
            yield key[len(prefix) :], int(item["Size"])


def _checked(relative: str) -> str:
    if not relative or any(part in ("", ".", "..") for part in relative.split("/")):
        raise StagingError(f"object {relative!r} under the prefix would be written outside it")
    return relative


def copy_prefix(
    client: Any, bucket: str, prefix: str, dest: Path, reporter: Reporter
) -> dict[str, int]:
    """Every object under ``s3://bucket/prefix`` into ``dest`` (made, empty); its files and
    sizes, relative to ``dest``. ``client`` needs a connection pool of CONNECTIONS."""
    from boto3.s3.transfer import TransferConfig, create_transfer_manager
    from s3transfer.subscribers import BaseSubscriber

    files: dict[str, int] = {}
    try:
        for relative, size in listed(client, bucket, prefix):
            files[_checked(relative)] = size
            if len(files) > MAX_OBJECTS:
                raise StagingError(f"s3://{bucket}/{prefix} holds over {MAX_OBJECTS} objects")
    except (BotoCoreError, ClientError) as error:
        raise StagingError(f"listing s3://{bucket}/{prefix} failed: {error}") from error
    if not files:
        raise StagingError(f"s3://{bucket}/{prefix} holds no objects")
    config = TransferConfig(
        multipart_threshold=PART_BYTES, multipart_chunksize=PART_BYTES, max_concurrency=WORKERS
    )
    lock = threading.Lock()

    class Progress(BaseSubscriber):
        def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
            with lock:
                reporter.advance(bytes_transferred)

    reporter.start(f"copy s3://{bucket}/{prefix}", sum(files.values()))
    try:
        dest.mkdir(parents=True, exist_ok=False)
        with create_transfer_manager(client, config) as manager:
            downloads = []
            for relative in sorted(files):
                (dest / relative).parent.mkdir(parents=True, exist_ok=True)
                downloads.append(
                    manager.download(
                        bucket, prefix + relative, str(dest / relative), subscribers=[Progress()]
                    )
                )
            for download in downloads:
                download.result()
        short = [n for n, size in files.items() if (dest / n).stat().st_size != size]
    except (BotoCoreError, ClientError, Boto3Error) as error:
        raise StagingError(f"copying s3://{bucket}/{prefix} failed: {error}") from error
    except OSError as error:
        raise StagingError(f"copying s3://{bucket}/{prefix} into {dest} failed: {error}") from error
    finally:
        reporter.finish()
    if short:
        raise StagingError(f"{len(short)} file(s) arrived with another size, e.g. {short[0]}")
    return files
