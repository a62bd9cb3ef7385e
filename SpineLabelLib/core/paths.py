"""Safe names and atomic file writing."""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str, fallback: str = "case") -> str:
    """A file-system-safe name: letters, digits, '.', '_' and '-' only; never '.', '..' or hidden."""
    name = _UNSAFE.sub("_", str(text)).strip("._-")
    return name[:120] or fallback


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Keep the full suffix chain (.nii.gz, .seg.nrrd) so writers pick the right format.
    suffix = "".join(path.suffixes) if path.suffixes else ""
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name[:40]}.", suffix=f".part{suffix}", dir=path.parent)
    os.close(handle)
    tmp = Path(tmp)
    try:
        yield tmp
        if tmp.exists():
            # mkstemp creates 0600; give the file the permissions a normal write would have.
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)
