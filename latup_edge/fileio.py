"""File helpers shared by every stage: atomic writes, content hashes and fast gzip."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

try:  # ISA-L's gzip decodes NIfTI about 1.3-2x faster than zlib (benchmarks/runtime_speed.py)
    from isal import igzip as _gzip
except ImportError:  # pragma: no cover - isal is a base dependency; zlib is the fallback
    import gzip as _gzip

# Level 1, as nibabel writes: label maps and probabilities compress well at the fastest level.
GZIP_LEVEL = 1


def atomic_write(path: Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then move it into place.

    A reader (or a run killed at any moment) never sees a partial file at ``path``. The folder must
    exist: creating output folders is the caller's decision.
    """
    path = Path(path)
    # A hidden name that keeps the real suffix (writers such as nibabel choose the format by it).
    tmp = path.with_name(f".{secrets.token_hex(4)}.{path.name}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # some writers (safetensors) create owner-only files
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: Path, value: Any) -> Path:
    """``value`` as indented JSON with a final newline, written atomically (``atomic_write``)."""
    text = json.dumps(value, indent=2) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def gunzip_file(path: Path) -> bytes:
    """The decompressed content of a gzip file (ISA-L when installed); OSError/EOFError when damaged."""
    return _gzip.decompress(Path(path).read_bytes())


def gzip_bytes(data: bytes) -> bytes:
    """``data`` gzip-compressed at ``GZIP_LEVEL`` (ISA-L when installed); no time stamp, so the same
    data always gives the same bytes (serial and distributed runs write identical files)."""
    return _gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
