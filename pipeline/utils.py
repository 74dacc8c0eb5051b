"""Small shared helpers: seeding, devices, atomic writes, file hashes."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

import numpy as np
import torch
from tqdm import tqdm

T = TypeVar("T")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda if available else cpu; anything else is passed to torch.device.

    ``name`` is a validated params.yaml ``device`` (`pipeline.config` checks the form and the GPU).
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path`` so readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    # torch.save(obj, path) names the zip's root folder after the (temporary) file: same object,
    # different bytes. Serialised in memory the root is always "archive".
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, lambda p: p.write_bytes(buffer.getvalue()))


STAGING_PREFIX = ".staging-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_staging(parent: str | Path) -> None:
    """Remove the ``parent/.staging-<pid>-*`` folders of processes that no longer run (killed writers)."""
    for stale in Path(parent).glob(f"{STAGING_PREFIX}*"):
        pid = stale.name[len(STAGING_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or not _pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)


@contextlib.contextmanager
def staging_dir(parent: str | Path) -> Iterator[Path]:
    """A fresh ``parent/.staging-<pid>-*`` folder for building outputs before they are renamed into place.

    It is removed on exit, whatever happens; a killed process cannot do that, so the staging
    folders of processes that no longer run are removed first.
    """
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(parent)
    staging = Path(tempfile.mkdtemp(dir=parent, prefix=f"{STAGING_PREFIX}{os.getpid()}-"))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def replace_dir(src: str | Path, dst: str | Path) -> None:
    """Move the finished folder ``src`` onto ``dst`` (same filesystem), replacing what was there: the old
    folder is renamed aside first, so ``dst`` is never a half-removed folder."""
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)


class _LogBar(tqdm):
    """A bar for logs: a new postfix waits for the next rate-limited refresh instead of forcing one."""

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
        super().set_postfix(ordered_dict, refresh=False, **kwargs)

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        super().set_postfix_str(s, refresh=False)


def progress(iterable: Iterable[T] | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar that does not flood logs: on a terminal as asked, otherwise (CI, `dvc queue logs`)
    one line a minute at most, plus the first and the last."""
    if sys.stderr.isatty():
        return tqdm(iterable, **kwargs)
    kwargs["mininterval"] = max(kwargs.get("mininterval", 0.1), 60.0)
    kwargs.setdefault("ascii", True)
    return _LogBar(iterable, **kwargs)


def atomic_json(obj: Any, path: str | Path) -> None:
    atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n"))


def content_hash(paths: list[Path], root: Path | None = None) -> str:
    """sha256 over the files' bytes (and their paths relative to ``root``, when several)."""
    h = hashlib.sha256()
    for path in paths:
        if root is not None:
            h.update(path.relative_to(root).as_posix().encode() + b"\0")
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()
