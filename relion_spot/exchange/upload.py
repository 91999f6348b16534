"""The lab's side of ``relion-spot stage FOLDER``: the folder's manifest, and its upload.

Every file under the folder (links followed, hidden names left out) is listed with the size and
sha256 of the bytes read; a path the cluster would refuse is refused here first, naming it. The
files go under ``in/<submission>/`` of the exchange bucket, the manifest last, so the import job
never sees half an upload. A file already there with the same size (an interrupted stage run
again) is not sent again: the import job checks every file's sha256 anyway.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .download import Progress
from .manifest import (
    MAX_FILES,
    NAME,
    Entry,
    Manifest,
    ManifestError,
    check_upload_path,
    sha256_and_size,
)


class UploadError(RuntimeError):
    """The folder cannot be staged as it is, or S3 refused; the message says which."""


@dataclass(frozen=True)
class Uploaded:
    manifest: Manifest
    sent: tuple[Entry, ...]
    kept: tuple[Entry, ...]


@dataclass(frozen=True)
class FolderFiles:
    files: list[tuple[str, Path]]
    """(path in the project, file) for every file staged, sorted."""
    hidden: list[str]
    """Hidden names left out (.DS_Store, RELION's .Nodes/, ...): the cluster keeps its own
    files in a project under hidden names, so none is ever staged."""


def folder_files(folder: Path) -> FolderFiles:
    """Every file under ``folder``, links followed (RELION's Movies and Import directories are
    often links; the cluster receives regular files), hidden names left out; a name the cluster
    refuses, an unreadable entry or a link loop ends it with one message naming it."""
    if not folder.is_dir():
        raise UploadError(f"{folder} is not a folder")
    found: list[tuple[str, Path]] = []
    hidden: list[str] = []
    seen: set[tuple[int, int]] = set()
    for directory, names, files in os.walk(folder, followlinks=True, onerror=_unreadable):
        here = Path(directory)
        info = here.stat()
        if (info.st_dev, info.st_ino) in seen:
            raise UploadError(
                f"{here.relative_to(folder)} leads back into the folder (a link loop)"
            )
        seen.add((info.st_dev, info.st_ino))
        for name in [n for n in names if n.startswith(".")]:
            hidden.append((here / name).relative_to(folder).as_posix() + "/")
            names.remove(name)
        names.sort()
        for name in sorted(files):
            path = here / name
            relative = path.relative_to(folder).as_posix()
            if name.startswith("."):
                hidden.append(relative)
                continue
            if not path.is_file():
                raise UploadError(f"{relative} is not a regular file (or a link to one)")
            try:
                found.append((check_upload_path(relative), path))
            except ManifestError as err:
                raise UploadError(str(err)) from None
            if len(found) > MAX_FILES:
                raise UploadError(f"{folder} holds more than {MAX_FILES} files")
    if not found:
        raise UploadError(f"{folder} holds no files")
    return FolderFiles(sorted(found), hidden)


def _unreadable(err: OSError) -> None:
    raise UploadError(f"{err.filename}: {err.strerror}")


def folder_manifest(
    folder: Path, *, submission: str, project: str, progress: Progress | None = None
) -> tuple[Manifest, list[tuple[Entry, Path]]]:
    """The folder's manifest (every file's size and sha256) and where each entry's bytes are."""
    shown = progress or Progress()
    files = folder_files(folder).files
    try:
        sizes = [p.stat().st_size for _, p in files]
        shown.begin(sum(sizes), len(files))
        pairs = []
        for name, path in files:
            entry = Entry(name, *sha256_and_size(path))
            shown.file(entry)
            shown.advance(entry.bytes)
            pairs.append((entry, path))
    except OSError as err:
        raise UploadError(f"{err.filename or folder}: {err.strerror or err}") from None
    finally:
        shown.end()
    manifest = Manifest(submission, project, (), tuple(e for e, _ in pairs))
    return manifest, pairs


def upload(
    s3: Any,
    bucket: str,
    prefix: str,
    manifest: Manifest,
    pairs: list[tuple[Entry, Path]],
    *,
    progress: Progress | None = None,
) -> Uploaded:
    """Send what is not there yet, then the manifest."""
    from botocore.exceptions import BotoCoreError, ClientError

    shown = progress or Progress()
    there: dict[str, int] = {}
    sent, kept = [], []
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            there |= {o["Key"]: int(o["Size"]) for o in page.get("Contents", [])}
        shown.begin(manifest.total_bytes, len(pairs))
        for entry, path in pairs:
            shown.file(entry)
            key = prefix + entry.path
            if there.get(key) == entry.bytes:
                shown.advance(entry.bytes)
                kept.append(entry)
                continue
            s3.upload_file(str(path), bucket, key, Callback=shown.advance)
            sent.append(entry)
        s3.put_object(Bucket=bucket, Key=prefix + NAME, Body=manifest.to_json().encode())
    except (BotoCoreError, ClientError, OSError) as err:
        raise UploadError(f"the upload to s3://{bucket}/{prefix} failed ({err})") from None
    finally:
        shown.end()
    return Uploaded(manifest, tuple(sent), tuple(kept))
