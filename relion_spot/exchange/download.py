"""The lab's side of ``relion-spot pull``: what an export's manifest lists, downloaded and checked.

Each file goes to a temporary name beside its place (hidden and random: no listed name can be
one), is checked against the manifest's size and sha256, then put in place, so a file in the
folder is always a whole, verified one. Where nothing may be replaced (an import into a
project), it is put in place by a hard link, which refuses a name that exists even if it
appeared a moment ago. A file
already there with the right digest is kept (a pull that was interrupted goes on where it
stopped). Nothing is written outside the folder: the manifest's paths are checked first.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .manifest import (
    MAX_MANIFEST_BYTES,
    NAME,
    PARTIAL_SUFFIX,
    Entry,
    Manifest,
    ManifestError,
    parse,
    sha256_file,
)

__all__ = ["PARTIAL_SUFFIX", "DownloadError", "Progress", "Pulled", "pull", "read_manifest"]


class DownloadError(RuntimeError):
    """The export is not there, or a file did not arrive whole; the message says which."""


@dataclass(frozen=True)
class Pulled:
    manifest: Manifest
    downloaded: tuple[Entry, ...]
    kept: tuple[Entry, ...]
    """Already in the folder with the manifest's digest."""


class Progress:
    """What a download reports as it goes (the CLI draws a bar; tests count)."""

    def begin(self, total_bytes: int, files: int) -> None: ...

    def file(self, entry: Entry) -> None: ...

    def advance(self, count: int) -> None: ...

    def end(self) -> None: ...


def read_manifest(s3: Any, bucket: str, prefix: str, *, sha256: str | None = None) -> Manifest:
    """The manifest under ``prefix``, read bounded; ``sha256``: its bytes must have this digest
    (the one the lab's CLI uploaded and named in the submission, not one put there since)."""
    from botocore.exceptions import ClientError

    try:
        # Bounded: a manifest planted in the exchange must not take a node's memory.
        body = s3.get_object(Bucket=bucket, Key=prefix + NAME)["Body"].read(MAX_MANIFEST_BYTES + 1)
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "404", "AccessDenied", "403"):
            # Without ListBucket on the key, S3 says AccessDenied for a key that is not there.
            raise DownloadError(
                f"s3://{bucket}/{prefix}{NAME} is not there (or not yours to read): the export "
                "has not finished, or the exchange has expired it"
            ) from None
        raise DownloadError(f"s3://{bucket}/{prefix}{NAME}: {err}") from None
    if sha256 is not None and hashlib.sha256(body).hexdigest() != sha256:
        raise DownloadError(
            f"s3://{bucket}/{prefix}{NAME} is not the manifest that was submitted (its sha256 "
            "differs): it was replaced after the upload"
        )
    try:
        return parse(body)
    except ManifestError as err:
        raise DownloadError(f"s3://{bucket}/{prefix}{NAME}: {err}") from None


def _whole(path: Path, entry: Entry) -> bool:
    return (
        path.is_file()
        and not path.is_symlink()
        and path.stat().st_size == entry.bytes
        and sha256_file(path) == entry.sha256
    )


def _place_new(partial: Path, target: Path, entry: Entry, folder: Path) -> None:
    """``partial`` at ``target`` unless something is there by now (then it must be the same)."""
    try:
        os.link(partial, target)
    except FileExistsError:
        if not _whole(target, entry):
            raise DownloadError(
                f"{entry.path} is already in {folder} with other content: it is never "
                "replaced; move it away or stage into another project"
            ) from None
    finally:
        partial.unlink(missing_ok=True)


def pull(
    s3: Any,
    bucket: str,
    prefix: str,
    folder: Path,
    *,
    progress: Progress | None = None,
    manifest: Manifest | None = None,
    replace: bool = True,
    paths: Callable[[object], str] | None = None,
) -> Pulled:
    """Every file the manifest lists, into ``folder`` at its path, verified. ``replace=False``:
    a file already there with other content is an error, never overwritten. ``paths``: a check
    every listed path must pass first (e.g. that it is one an export writes)."""
    from botocore.exceptions import BotoCoreError, ClientError

    shown = progress or Progress()
    manifest = manifest or read_manifest(s3, bucket, prefix)
    try:
        for entry in manifest.files:
            if paths is not None:
                paths(entry.path)
    except ManifestError as err:
        raise DownloadError(f"s3://{bucket}/{prefix}{NAME}: {err}") from None
    root = folder.resolve()
    downloaded, kept = [], []
    shown.begin(manifest.total_bytes, len(manifest.files))
    try:
        for entry in manifest.files:
            target = root / entry.path
            if not target.resolve().is_relative_to(root):
                raise DownloadError(f"{entry.path} leads outside {folder}")
            shown.file(entry)
            if _whole(target, entry):
                shown.advance(entry.bytes)
                kept.append(entry)
                continue
            if not replace and (target.exists() or target.is_symlink()):
                raise DownloadError(
                    f"{entry.path} is already in {folder} with other content: it is never "
                    "replaced; move it away or stage into another project"
                )
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.{secrets.token_hex(4)}{PARTIAL_SUFFIX}")
            callback: Callable[[int], None] = shown.advance
            try:
                size = s3.head_object(Bucket=bucket, Key=prefix + entry.path)["ContentLength"]
                if size != entry.bytes:  # refused before a byte is fetched
                    raise DownloadError(
                        f"{entry.path}: the exchange holds {size} bytes, the manifest says "
                        f"{entry.bytes}"
                    )
                s3.download_file(bucket, prefix + entry.path, str(partial), Callback=callback)
            except (BotoCoreError, ClientError) as err:
                raise DownloadError(f"{entry.path}: the download failed ({err})") from None
            if not _whole(partial, entry):
                partial.unlink(missing_ok=True)
                raise DownloadError(
                    f"{entry.path}: what arrived does not match the manifest's size and sha256"
                )
            if replace:
                os.replace(partial, target)
            else:
                _place_new(partial, target, entry, folder)
            downloaded.append(entry)
    finally:
        shown.end()
    return Pulled(manifest, tuple(downloaded), tuple(kept))
