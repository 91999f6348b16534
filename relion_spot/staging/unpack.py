"""Streaming, traversal-safe extraction and the checks that make a staged dataset usable."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import mrcfile
import starfile

from .errors import StagingError
from .report import Reporter


class _Counting(io.RawIOBase):
    """Reads the archive file and tells the reporter how far into it extraction is."""

    def __init__(self, f: Any, reporter: Reporter) -> None:
        self._f = f
        self._reporter = reporter

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._f.readinto(buffer)
        self._reporter.advance(n or 0)
        return n or 0


def _inside(root: Path, candidate: str) -> bool:
    return os.path.commonpath([root, os.path.normpath(candidate)]) == str(root)


def _refuse(member: tarfile.TarInfo, why: str) -> StagingError:
    return StagingError(f"archive member {member.name!r} {why}; refusing to unpack this archive")


def extract(archive: Path, dest: Path, reporter: Reporter) -> dict[str, int]:
    """Unpack ``archive`` into ``dest`` one member at a time; return regular files and sizes.

    Members with absolute paths, ``..`` escapes, links pointing outside ``dest`` or device/FIFO
    entries are refused: the run stops with an error before writing that member.
    """
    root = Path(os.path.realpath(dest))
    files: dict[str, int] = {}
    reporter.start(f"unpack {archive.name}", archive.stat().st_size)
    try:
        with (
            open(archive, "rb", buffering=0) as raw,
            tarfile.open(
                fileobj=io.BufferedReader(_Counting(raw, reporter), 1 << 20), mode="r|*"
            ) as tar,
        ):
            for member in tar:
                name = member.name
                if PurePosixPath(name).is_absolute() or name.startswith(("\\", "~")):
                    raise _refuse(member, "has an absolute path")
                target = os.path.join(root, name)
                if not _inside(root, target) or not _inside(
                    root, os.path.realpath(os.path.dirname(target))
                ):
                    raise _refuse(member, f"would be written outside {dest}")
                if os.path.normpath(target) == str(root):
                    continue
                if member.isdir():
                    os.makedirs(target, exist_ok=True)
                    continue
                os.makedirs(os.path.dirname(target), exist_ok=True)
                if os.path.lexists(target) and not os.path.isdir(target):
                    os.unlink(target)
                if member.isreg():
                    source = tar.extractfile(member)
                    assert source is not None
                    with open(target, "wb") as out:
                        shutil.copyfileobj(source, out, 1 << 20)
                    os.chmod(target, 0o644 | (member.mode & 0o111))
                    files[os.path.normpath(name)] = member.size
                elif member.issym():
                    # Resolved from where the link really is: links unpacked before it (a -> .)
                    # may make its directory's text say less than its depth.
                    link = os.path.join(os.path.realpath(os.path.dirname(target)), member.linkname)
                    if os.path.isabs(member.linkname) or not _inside(root, link):
                        raise _refuse(member, f"links outside {dest}")
                    os.symlink(member.linkname, target)
                elif member.islnk():
                    link = os.path.join(root, member.linkname)
                    if not _inside(root, link) or not _inside(root, os.path.realpath(link)):
                        raise _refuse(member, f"links outside {dest}")
                    os.link(link, target)
                    files[os.path.normpath(name)] = os.path.getsize(link)
                else:
                    raise _refuse(member, "is a device or FIFO, which a dataset has no use for")
    except (tarfile.TarError, EOFError, zlib.error) as error:
        archive.unlink()
        raise StagingError(
            f"{archive.name} is not a complete, readable tar archive ({error}); it was removed "
            "so the next run downloads it again"
        ) from error
    except OSError as error:
        raise StagingError(f"unpacking {archive.name} into {dest} failed: {error}") from error
    finally:
        reporter.finish()
    return files


@dataclass(frozen=True)
class Verified:
    root: Path
    files: int
    particles: int
    stacks: int
    box: tuple[int, ...]


def find_root(dest: Path, relative: str) -> Path:
    """``dest`` itself, or the archive's single top-level folder, whichever holds ``relative``."""
    if (dest / relative).exists():
        return dest
    tops = [p for p in dest.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if len(tops) == 1 and (tops[0] / relative).exists():
        return tops[0]
    raise StagingError(f"{relative} is not in the unpacked archive under {dest}")


def verify(
    dest: Path,
    files: dict[str, int],
    particles_star: str,
    reference_map: str,
    expected_files: int | None,
) -> Verified:
    missing = [n for n in files if not (dest / n).is_file()]
    short = [
        n for n, size in files.items() if n not in missing and (dest / n).stat().st_size != size
    ]
    if missing or short:
        bad = (missing + short)[0]
        raise StagingError(
            f"{len(missing)} file(s) missing and {len(short)} of the wrong size after unpacking, "
            f"e.g. {bad}"
        )
    if expected_files is not None and len(files) != expected_files:
        raise StagingError(
            f"the archive holds {len(files)} files, expected {expected_files}: not the dataset "
            "asked for, or an incomplete copy of it"
        )
    root = find_root(dest, particles_star)
    star_path = root / particles_star
    try:
        blocks = starfile.read(star_path, always_dict=True)
    except Exception as error:  # starfile raises many kinds on malformed input
        raise StagingError(f"{particles_star} is not a readable STAR file: {error}") from error
    tables = [t for t in blocks.values() if hasattr(t, "columns") and "rlnImageName" in t.columns]
    if not tables or len(tables[-1]) == 0:
        raise StagingError(f"{particles_star} has no particle table (no rlnImageName rows)")
    images = tables[-1]["rlnImageName"].astype(str)
    stacks = sorted({name.split("@", 1)[-1] for name in images})
    outside = [s for s in stacks if s.startswith("/") or ".." in PurePosixPath(s).parts]
    if outside:
        raise StagingError(
            f"{particles_star} names {len(outside)} image stack(s) outside the set, e.g. "
            f"{outside[0][:120]} (paths relative to the set, without ..)"
        )
    absent = [s for s in stacks if not (root / s).is_file()]
    if absent:
        raise StagingError(
            f"{particles_star} names {len(absent)} image stack(s) not in the archive, "
            f"e.g. {absent[0]}"
        )
    map_path = root / reference_map
    if not map_path.is_file():
        raise StagingError(
            f"{reference_map} is not in the set beside {particles_star} (in {root.name or root})"
        )
    try:
        with mrcfile.mmap(map_path, mode="r", permissive=False) as mrc:
            box = tuple(int(n) for n in mrc.data.shape)
    except Exception as error:  # mrcfile raises ValueError and friends on bad maps
        raise StagingError(f"{reference_map} is not a readable MRC map: {error}") from error
    return Verified(root, len(files), len(images), len(stacks), box)
