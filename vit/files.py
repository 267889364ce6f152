"""Opening the files a dataset names, and the limits on what a dataset may hold: local paths only (no URL or
`pipe:` command reaches a reader), regular files only (a FIFO or device is refused, never opened to wait), shard
patterns counted before they are expanded, and each size a file states (classes, shards, member bytes) bounded
before anything is allocated for it.

The limits: environment variables, read where they are checked (in DataLoader workers too), each named in the
error that it stops, as VIT_MAX_PARAMS bounds a model read from a file (vit/model.py).
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from .errors import ConfigError, DataError

URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")  # pipe:, http:, s3:, file:... (a drive letter is one letter)

# name: (default, what it bounds). ImageNet-21k has 21,843 classes; a tar shard holds thousands of samples, a
# dataset rarely more than tens of thousands of shards; a photo is a few MB.
LIMITS = {
    "VIT_MAX_CLASSES": (100_000, "classes a dataset's labels may index"),
    "VIT_MAX_SHARDS": (100_000, "shard files a pattern may name"),
    "VIT_MAX_MEMBER_BYTES": (256 * 2**20, "bytes a tar member or an image cell may hold"),
}


def limit(name: str) -> int:
    """The limit `name` (one of LIMITS): its environment variable, else its default."""
    default, what = LIMITS[name]
    value = os.environ.get(name, "")
    if not value:
        return default
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 1:
        raise ConfigError(f"the environment variable {name}={value!r} must be a positive integer ({what})")
    return n


def over_limit(name: str, found: str) -> str:
    """The end of an error for `found` (a count, in words) past the limit `name`."""
    return f"{found}, over the limit of {limit(name):,} ({LIMITS[name][1]}); raise it with the environment " \
           f"variable {name}"


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


def file_under(path: str, roots: list[str], where: str) -> str:
    """`path` (relative ones taken from the first root), if it lies inside one of `roots` once links are
    resolved; a DataError naming `where` otherwise: a dataset's cell may name its own files, not any file of the
    machine."""
    local_path(path, where)
    full = os.path.realpath(os.path.join(roots[0], path) if roots and not os.path.isabs(path) else path)
    for root in roots:
        base = os.path.realpath(root)
        if full == base or full.startswith(base.rstrip(os.sep) + os.sep):
            return full
    raise DataError(f"{where}: the image path {path!r} is outside the dataset's folder ({', '.join(roots)}); "
                    "a path cell may name only the dataset's own files (or embed the image's bytes)")


# --------------------------------------------------------------------------------------------------------
# Brace patterns: counted before they are expanded


def count_braces(pattern: str) -> int:
    """How many names `braceexpand.braceexpand(pattern)` yields, computed from the pattern alone: a range of
    10^9 costs nothing to count (braceexpand materialises each part's names first). This follows braceexpand's
    own parser (parse_pattern, parse_expression, parse_sequence) step by step, with products and sums of counts
    where it builds products and chains of names."""
    return _count_pattern(pattern)


_INT_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)(?:\.\.-?(\d+))?$")
_CHAR_RANGE = re.compile(r"^([A-Za-z])\.\.([A-Za-z])(?:\.\.-?(\d+))?$")
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # braceexpand.alphabet


def _count_pattern(pattern: str) -> int:
    start = pos = depth = 0
    count = 1
    while pos < len(pattern):
        if pattern[pos] == "\\":
            pos += 2
            continue
        if pattern[pos] == "{":
            if depth == 0 and pos > start:
                start = pos  # a literal: one way
            depth += 1
        elif pattern[pos] == "}":
            depth -= 1
            if depth == 0:
                expr = pattern[start + 1:pos]
                n = _count_expression(expr)
                count *= _count_pattern(expr) if n is None else n  # not a range or sequence: literal braces
                start = pos + 1
        pos += 1
    if depth != 0:
        raise DataError(f"unbalanced braces in the pattern {pattern!r}")
    return count


def _count_expression(expr: str) -> int | None:
    m = _INT_RANGE.match(expr)
    if m:
        start, end, step = int(m.group(1)), int(m.group(2)), (int(m.group(3) or 1) or 1)
        return len(range(start, end + 1, step) if start < end else range(start, end - 1, -step))
    m = _CHAR_RANGE.match(expr)
    if m:
        start, end, step = _ALPHABET.index(m.group(1)), _ALPHABET.index(m.group(2)), (int(m.group(3) or 1) or 1)
        return len(range(start, end + 1, step) if start < end else range(start, end - 1, -step))
    start = pos = depth = 0
    items = []
    while pos < len(expr):
        if expr[pos] == "\\":
            pos += 2
            continue
        if expr[pos] == "{":
            depth += 1
        elif expr[pos] == "}":
            depth -= 1
        elif expr[pos] == "," and depth == 0:
            items.append(expr[start:pos])
            start = pos + 1
        pos += 1
    if depth != 0 or not items:
        return None
    return sum(_count_pattern(item) for item in [*items, expr[start:]])


def expand_braces(pattern: str, where: str) -> list[str]:
    """The names of a brace pattern (braceexpand's syntax), counted first: past VIT_MAX_SHARDS a DataError
    naming `where` and the count, before a name is made."""
    import braceexpand

    try:
        n = count_braces(pattern)
    except ValueError as e:  # unbalanced braces; a range bound of more digits than int() reads
        raise DataError(f"{where}: {e}") from e
    if n > limit("VIT_MAX_SHARDS"):
        raise DataError(f"{where}: " + over_limit("VIT_MAX_SHARDS", f"the pattern names {n:,} shard files"))
    return list(braceexpand.braceexpand(pattern))
