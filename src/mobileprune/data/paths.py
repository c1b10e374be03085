r"""Where data sets live: the data directory, the cache, and archive unpacking.

mobileprune never downloads anything. The user names a directory holding the data
sets, either with the CLI flag ``--data-dir`` or with the environment variable
:data:`ENV_DATA` (``MOBILEPRUNE_DATA``). A data set in that directory may be

* unpacked, as a folder ``<data_dir>/<name>/`` (or ``<data_dir>`` itself already is
  that folder), or
* packed, as a tar archive ``<data_dir>/<name>.tgz``. It is then unpacked once into
  the cache directory (:func:`cache_dir`) and read from there on later calls. The data
  directory itself is only read, never written.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import tarfile
import tempfile
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mobileprune.errors import DataError

__all__ = [
    "ENV_DATA",
    "ENV_CACHE",
    "resolve_data_dir",
    "cache_dir",
    "locate_dataset",
    "write_npz_cache",
]

#: Environment variable naming the data directory (the CLI flag ``--data-dir`` wins).
ENV_DATA = "MOBILEPRUNE_DATA"
#: Environment variable naming the cache directory where archives are unpacked.
ENV_CACHE = "MOBILEPRUNE_CACHE"

# File written into an unpacked archive folder, recording which archive it came from.
_STAMP = ".mobileprune-unpacked.json"
_ARCHIVE_SUFFIXES = (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".tbz2", ".txz", ".tar")


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    r"""Return the data directory to read data sets from.

    The explicit argument wins; otherwise the environment variable
    ``MOBILEPRUNE_DATA`` is used (an empty value counts as unset). ``~`` is expanded.

    Args:
        data_dir (str or os.PathLike, optional): directory given explicitly, usually
            from the CLI flag ``--data-dir``. Default: ``None``.

    Returns:
        pathlib.Path: the data directory. It exists and is a directory.

    Raises:
        DataError: if neither ``data_dir`` nor ``MOBILEPRUNE_DATA`` is given, or if
            the directory does not exist or is not a directory.

    Examples:
        >>> resolve_data_dir("/work/shared/data")  # doctest: +SKIP
        PosixPath('/work/shared/data')
    """
    if data_dir is not None and str(data_dir) != "":
        path, source = Path(data_dir), "--data-dir"
    elif os.environ.get(ENV_DATA):
        path, source = Path(os.environ[ENV_DATA]), f"${ENV_DATA}"
    else:
        raise DataError(
            "no data directory given: pass --data-dir DIR (or data_dir=...) or set "
            f"the environment variable {ENV_DATA} to the folder holding the data sets"
        )
    path = path.expanduser()
    if not path.exists():
        raise DataError(
            f"data directory {str(path)!r} (from {source}) does not exist; "
            f"check --data-dir or {ENV_DATA}"
        )
    if not path.is_dir():
        raise DataError(
            f"data directory {str(path)!r} (from {source}) is not a directory; "
            f"check --data-dir or {ENV_DATA}"
        )
    return path


def cache_dir() -> Path:
    r"""Return the cache directory, creating it if needed.

    The directory is ``$MOBILEPRUNE_CACHE`` if set, else
    ``$XDG_CACHE_HOME/mobileprune``, else ``~/.cache/mobileprune``.

    Returns:
        pathlib.Path: an existing directory.

    Raises:
        DataError: if the directory cannot be created.
    """
    if os.environ.get(ENV_CACHE):
        path = Path(os.environ[ENV_CACHE]).expanduser()
    elif os.environ.get("XDG_CACHE_HOME"):
        path = Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "mobileprune"
    else:
        path = Path.home() / ".cache" / "mobileprune"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"cannot create cache directory {str(path)!r} ({exc}); "
            f"set {ENV_CACHE} to a writable folder"
        ) from exc
    return path


def locate_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    archive: str | None = None,
    marker: str | Sequence[str] | None = None,
) -> Path:
    r"""Find the folder of the data set ``name``, unpacking its archive if needed.

    The data directory is resolved with :func:`resolve_data_dir`, then these places
    are tried in order:

    1. ``<data_dir>/<name>/``, a directory (holding ``marker`` if given);
    2. ``<data_dir>`` itself, if ``marker`` is given and it holds the marker file;
    3. the archive ``<data_dir>/<archive>`` (default ``<name>.tgz``). It is unpacked
       into ``cache_dir()/<archive stem>/`` and ``<archive stem>/<name>/`` is
       returned (or ``<archive stem>/`` itself if the archive has no ``<name>``
       folder but holds the marker at its top level).

    An archive is unpacked once: later calls reuse the cached folder as long as the
    archive's size and modification time are unchanged. Unpacking goes into a fresh
    temporary folder in the cache directory which is then renamed into place, so a
    concurrent or interrupted unpacking never leaves a partly filled folder under the
    final name. Members are extracted with the ``"data"`` safety filter of
    :mod:`tarfile` (no absolute paths, no ``..``, no links leaving the folder, no
    device files).

    Args:
        name (str): folder name of the data set, e.g. ``"mnist"``.
        data_dir (str or os.PathLike, optional): data directory; see
            :func:`resolve_data_dir`. Default: ``None``.
        archive (str, optional): archive file name inside the data directory.
            Default: ``f"{name}.tgz"``.
        marker (str or sequence of str, optional): file name(s) proving a folder is
            the data set; a folder qualifies if it contains any of them.
            Default: ``None`` (any folder named ``name`` qualifies).

    Returns:
        pathlib.Path: the folder holding the data set's files.

    Raises:
        DataError: if the data directory cannot be resolved, the data set is in none
            of the places above (the message lists them), or the archive is corrupt
            or unsafe.

    Examples:
        >>> root = locate_dataset("mnist", "/work/shared/data")  # doctest: +SKIP
        >>> sorted(p.name for p in root.iterdir())  # doctest: +SKIP
        ['t10k-images.idx3-ubyte', 't10k-labels.idx1-ubyte', ...]
    """
    if not name or Path(name).name != name:
        raise DataError(f"invalid data set name {name!r}: expected a plain folder name")
    root = resolve_data_dir(data_dir)
    markers = _as_markers(marker)
    found, looked = _find_unpacked(root, name, markers)
    if found is not None:
        return found
    archive_name = archive if archive is not None else f"{name}.tgz"
    archive_path = root / archive_name
    looked.append(f"archive {archive_path}")
    if archive_path.is_file():
        return _find_in_archive(archive_path, archive_name, name, markers)
    raise DataError(
        f"data set {name!r} not found in data directory {str(root)!r}; looked for: "
        + "; ".join(looked)
    )


def _find_unpacked(root: Path, name: str,
                   markers: tuple[str, ...]) -> tuple[Path | None, list[str]]:
    """``<root>/<name>``, or ``root`` itself if it holds a marker, else ``None``; and the
    places looked at (for the error message)."""
    looked: list[str] = []
    folder = root / name
    if folder.is_dir() and _has_marker(folder, markers):
        return folder, looked
    looked.append(f"folder {folder}" + _marker_note(markers))
    if markers:
        if _has_marker(root, markers):
            return root, looked
        looked.append(f"marker file {_marker_list(markers)} directly in {root}")
    return None, looked


def _find_in_archive(archive_path: Path, archive_name: str, name: str,
                     markers: tuple[str, ...]) -> Path:
    """The data set folder in the archive, unpacked once into the cache: ``<name>/``,
    or the archive's top level if it holds a marker."""
    dest = _unpack_once(archive_path, cache_dir() / _archive_stem(archive_name))
    if (dest / name).is_dir() and _has_marker(dest / name, markers):
        return dest / name
    if markers and _has_marker(dest, markers):
        return dest
    raise DataError(
        f"archive {str(archive_path)!r} does not contain a folder {name!r}"
        + _marker_note(markers)
        + f" (unpacked into {dest})"
    )


def _as_markers(marker: str | Sequence[str] | None) -> tuple[str, ...]:
    if marker is None:
        return ()
    if isinstance(marker, (str, os.PathLike)):
        return (os.fspath(marker),)
    return tuple(os.fspath(m) for m in marker)


def _has_marker(folder: Path, markers: tuple[str, ...]) -> bool:
    return not markers or any((folder / m).is_file() for m in markers)


def _marker_list(markers: tuple[str, ...]) -> str:
    return " or ".join(repr(m) for m in markers)


def _marker_note(markers: tuple[str, ...]) -> str:
    return f" containing {_marker_list(markers)}" if markers else ""


def _archive_stem(archive_name: str) -> str:
    base = Path(archive_name).name
    for suffix in _ARCHIVE_SUFFIXES:
        if base.lower().endswith(suffix) and len(base) > len(suffix):
            return base[: -len(suffix)]
    return Path(base).stem or base


def _archive_signature(archive: Path) -> dict[str, int | str]:
    st = archive.stat()
    return {"archive": archive.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _is_complete(dest: Path, signature: dict[str, int | str]) -> bool:
    """True if ``dest`` is a finished unpacking of the archive with ``signature``."""
    try:
        recorded = json.loads((dest / _STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(recorded, dict) and all(
        recorded.get(k) == v for k, v in signature.items()
    )


def _unpack_once(archive: Path, dest: Path) -> Path:
    """Unpack ``archive`` into ``dest`` unless an identical unpacking is there."""
    try:
        signature = _archive_signature(archive)
    except OSError as exc:
        raise DataError(f"cannot read archive {str(archive)!r}: {exc}") from exc
    if _is_complete(dest, signature):
        return dest

    parent = dest.parent
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; the final folder should not be
        _safe_extract(archive, tmp)
        (tmp / _STAMP).write_text(json.dumps(signature), encoding="utf-8")
        try:
            os.replace(tmp, dest)  # atomic; fails if dest exists and is not empty
        except OSError:
            if _is_complete(dest, signature):
                return dest  # another process finished first
            # dest is stale (made from a different archive) or foreign: swap it out.
            trash = parent / f".{dest.name}.old-{uuid.uuid4().hex}"
            try:
                os.replace(dest, trash)
            except FileNotFoundError:
                pass
            try:
                os.replace(tmp, dest)
            except OSError as exc:
                if _is_complete(dest, signature):
                    return dest
                raise DataError(
                    f"cannot move unpacked archive {str(archive)!r} into {str(dest)!r}: "
                    f"{exc}"
                ) from exc
            finally:
                shutil.rmtree(trash, ignore_errors=True)
        return dest
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _safe_extract(archive: Path, target: Path) -> None:
    """Extract every member of ``archive`` into ``target`` with the ``data`` filter."""
    try:
        with tarfile.open(archive, "r:*") as tf:
            if hasattr(tarfile, "data_filter"):
                tf.extractall(target, filter="data")
            else:  # Python without PEP 706 filters: allow plain files and folders only.
                members = tf.getmembers()
                for m in members:
                    p = Path(m.name)
                    if p.is_absolute() or ".." in p.parts or not (m.isfile() or m.isdir()):
                        raise DataError(
                            f"archive {str(archive)!r} has an unsafe member {m.name!r}"
                        )
                tf.extractall(target, members=members)
    except DataError:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise DataError(f"cannot unpack archive {str(archive)!r}: {exc}") from exc


def write_npz_cache(path: Path, arrays: dict[str, np.ndarray], what: str) -> None:
    """Write decoded arrays as the ``.npz`` cache file ``path``, atomically (a temp file in
    the same folder, then ``os.replace``); a failure only costs a ``RuntimeWarning``
    naming ``what``. Cache files are named ``<prefix>-<hash>.npz``: after a successful
    write, the other files of the same prefix (caches made before their source changed)
    are removed."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a cache may be shared
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        warnings.warn(f"could not write {what} cache {str(path)!r}: {exc}", RuntimeWarning,
                      stacklevel=3)
        return
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    prefix = path.name[: path.name.rindex("-") + 1]
    for old in path.parent.glob(f"{glob.escape(prefix)}*.npz"):
        if old != path:
            try:
                old.unlink()
            except OSError:
                pass
