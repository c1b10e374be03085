"""Files written safely: the one atomic writer, the lock on an output, and the check
that an output is not one of the inputs (issue 20, item 4).

Torch-free (the runtime imports it). Every file mobileprune writes goes through
:func:`atomic_write`: the bytes go to a temporary file in the target's folder, are
flushed to disk, and replace the target in one ``os.replace``; a failure or an
interruption leaves the old file (or none) and no partial one.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator

from mobileprune.errors import ConfigError

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "output_lock",
           "same_file", "refuse_inputs_as_outputs"]


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call ``write(tmp_path)``, then move ``tmp_path`` onto ``path`` atomically.

    The temporary file lies in ``path``'s folder (created when missing), so the rename
    never crosses a file system; it gets the usual mode (``0666 & ~umask``) and is
    fsynced before the rename. In a ``torchrun`` group only rank 0 writes. On any exception, ``KeyboardInterrupt`` included, the
    temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    if not _writer():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _writer() -> bool:
    """Whether this process writes files: always, except ranks other than 0 of a
    ``torchrun`` group (:mod:`mobileprune.distributed`), where rank 0 writes."""
    dist = sys.modules.get("torch.distributed")
    return not (dist is not None and dist.is_available() and dist.is_initialized()
                and dist.get_rank() != 0)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> int:
    """Write ``data`` to ``path`` atomically; return its size."""
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    return len(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether ``a`` and ``b`` name the same file: the same existing inode (through links
    and different spellings), or the same resolved path when one does not exist yet."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def _inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    return Path(folder).resolve() in Path(path).resolve().parents


def refuse_inputs_as_outputs(inputs: Iterable[str | os.PathLike | None],
                             outputs: Iterable[str | os.PathLike | None],
                             folders: Iterable[str | os.PathLike | None] = ()) -> None:
    """Raise :class:`ConfigError` when a file the command writes (``outputs``), or a
    folder it fills (``folders``), is or holds one of the files it reads (``inputs``).

    ``None`` entries are skipped, so optional arguments can be passed as they are.
    """
    ins = [p for p in inputs if p is not None]
    for out in (p for p in outputs if p is not None):
        for inp in ins:
            if same_file(inp, out):
                raise ConfigError(f"the output {out} is the input {inp}: writing it would destroy "
                                  "the input; choose another --out")
    for folder in (p for p in folders if p is not None):
        for inp in ins:
            if same_file(inp, folder) or _inside(inp, folder):
                raise ConfigError(f"the output folder {folder} holds the input {inp}: writing it "
                                  "could overwrite the input; choose another output folder")


@contextlib.contextmanager
def output_lock(path: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive lock on the output ``path`` (the file ``PATH.lock`` beside it)
    for the body of the ``with``: a second run that writes the same output while the
    first one is active gets a :class:`ConfigError` instead of racing it.

    The lock is an ``fcntl.flock`` on the lock file, so the operating system drops it
    when its process dies (a killed run never leaves a stale lock behind); the file is
    removed when the body ends. Where ``fcntl`` does not exist (Windows) no lock is taken.
    """
    lock = Path(f"{os.fspath(path)}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield lock
        return
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"another mobileprune run is writing {path} (it holds {lock}); "
                              "wait for it to finish or choose another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        try:
            yield lock
        finally:
            with contextlib.suppress(OSError):
                os.unlink(lock)
    finally:
        os.close(fd)
