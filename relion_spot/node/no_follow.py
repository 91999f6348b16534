"""Files root writes where a job may write too (/data), opened without following any link.

A job can plant a symbolic link at any path under /data; a root process that followed it would
write wherever the job pointed (into /etc, or a file the job cannot write). Here every component
of the path is opened relative to its parent with O_NOFOLLOW, so a link anywhere on the way is
an error (ELOOP/ENOTDIR), never a detour; the file itself must be a regular file with one link.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import PurePosixPath

DIRECTORY_MODE = 0o755


def read_small(path: str | os.PathLike[str], limit: int) -> bytes | None:
    """The bytes of a regular file of at most ``limit`` bytes, read as a root reader of files
    jobs write must: its last component not followed if a link, never a FIFO or a device (which
    could block or never end); None when it is missing or not such a file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
            return None
        return os.read(fd, limit + 1)
    finally:
        os.close(fd)


def append_line(path: str, line: str, *, mode: int = 0o644) -> None:
    """Append ``line`` and a newline to ``path`` (absolute), making missing directories; an
    OSError names the component that was a link or not a plain file."""
    parts = PurePosixPath(path).parts
    if not parts or parts[0] != "/" or len(parts) < 2 or ".." in parts:
        raise OSError(errno.EINVAL, f"{path!r} is not an absolute path without '..'")
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in parts[1:-1]:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, DIRECTORY_MODE, dir_fd=fd)
            try:
                child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as err:
                raise OSError(err.errno, f"{name} in {path} is a link or not a directory") from None
            os.close(fd)
            fd = child
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK
        try:
            out = os.open(parts[-1], flags, mode, dir_fd=fd)
        except OSError as err:
            raise OSError(err.errno, f"{path} is a link ({os.strerror(err.errno or 0)})") from None
        try:
            info = os.fstat(out)
            if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
                raise OSError(errno.EPERM, f"{path} is not a plain file with one link")
            os.write(out, (line + "\n").encode())
        finally:
            os.close(out)
    finally:
        os.close(fd)
