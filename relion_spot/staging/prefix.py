"""A data set kept in S3 as its files under a prefix, copied to a local directory in parallel.

What a Class3D with ``--dataset s3://bucket/prefix/`` runs on its GPU node before RELION
(relion_spot.jobs.dataset): every object under the prefix is listed (ListObjectsV2, boto3's
paginator) and fetched with boto3's managed transfer (parallel ranged GETs within a large
object, several objects at a time), each to a temporary name renamed into place, so the copy
runs at what the instance's network and S3 allow rather than one stream's rate. No unpacking
follows: the files arrive as they are. A key that would leave the directory (an empty, ``.`` or
``..`` part) or that names a folder marker is refused or skipped; nothing else is trusted about
the listing either: each file's size is checked against it afterwards.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any

from boto3.exceptions import Boto3Error
from botocore.exceptions import BotoCoreError, ClientError

from .errors import StagingError
from .report import Reporter

WORKERS = 8
"""Objects fetched at a time; each large object is fetched in parallel parts besides."""
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
    parts = PurePosixPath(relative).parts
    if (
        not relative
        or relative.startswith("/")
        or any(part in ("", ".", "..") for part in relative.split("/"))
        or not parts
    ):
        raise StagingError(f"object {relative!r} under the prefix would be written outside it")
    return relative


def copy_prefix(
    client: Any, bucket: str, prefix: str, dest: Path, reporter: Reporter
) -> dict[str, int]:
    """Every object under ``s3://bucket/prefix`` into ``dest`` (made, empty); its files and
    sizes, relative to ``dest``."""
    from boto3.s3.transfer import TransferConfig

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
    dest.mkdir(parents=True, exist_ok=False)
    config = TransferConfig(
        multipart_threshold=PART_BYTES, multipart_chunksize=PART_BYTES, max_concurrency=WORKERS
    )
    reporter.start(f"copy s3://{bucket}/{prefix}", sum(files.values()))
    lock = threading.Lock()

    def advance(n: int) -> None:
        with lock:
            reporter.advance(n)

    def fetch(relative: str) -> None:
        target = dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.part")
        client.download_file(
            bucket, prefix + relative, str(temporary), Config=config, Callback=advance
        )
        os.replace(temporary, target)

    try:
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            list(pool.map(fetch, sorted(files)))
    except (BotoCoreError, ClientError, Boto3Error) as error:
        raise StagingError(f"copying s3://{bucket}/{prefix} failed: {error}") from error
    except OSError as error:
        raise StagingError(f"copying s3://{bucket}/{prefix} into {dest} failed: {error}") from error
    finally:
        reporter.finish()
    short = [n for n, size in files.items() if (dest / n).stat().st_size != size]
    if short:
        raise StagingError(f"{len(short)} file(s) arrived with another size, e.g. {short[0]}")
    return files
