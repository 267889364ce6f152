"""Opening the files a dataset names: local paths only (no URL or `pipe:` command reaches a reader), and regular
files only (a FIFO or device is refused, never opened to wait)."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from .errors import DataError

URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")  # pipe:, http:, s3:, file:... (a drive letter is one letter)


def local_path(name: str, where: str) -> str:
    """`name`, a local file name; a DataError naming `where` for anything a reader would treat as a URL or a
    command (webdataset opens `pipe:CMD` through a shell, `http:`/`s3:` over the network)."""
    if URL_SCHEME.match(name):
        raise DataError(f"{where}: {name!r} is not a local path (URLs and pipe: commands are not read; "
                        "a file on this machine whose name holds a colon reads as ./NAME)")
    return name


def open_regular_file(path: str | Path):
    """`path` opened for reading if it is a regular file; a DataError for a FIFO, device or folder (opening a FIFO
    would wait for a writer)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise DataError(f"cannot open {path}: {e.strerror or e}") from e
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise DataError(f"{path} is not a regular file (a FIFO, device or folder is not read)")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")
