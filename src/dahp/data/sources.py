"""Reading labelled images from wherever they live, through one entry point.

:func:`load_source` turns a *spec* string into an :class:`ImageCollection`:

``digits``
    scikit-learn's embedded 8x8 digits.
``cifar10`` (alias ``cifar10-download``)
    CIFAR-10's python batches under ``<cache_dir>/cifar-10-batches-py``, downloaded by
    torchvision when absent (needs a network connection).
``DIR``
    a directory of CIFAR python batches (``data_batch_1..5``, ``test_batch``,
    ``batches.meta``, or a parent holding ``cifar-10-batches-py``), otherwise an image tree
    in ImageFolder layout: ``DIR/<class>/<image>``, or ``DIR/<train|val|test>/<class>/<image>``
    whose top level is recorded as each image's ``partition``. A single directory wrapping the
    whole tree (``DIR/cifar10/train/...``) is looked through; hidden files are ignored.
``ARCHIVE.tar[.gz|.bz2|.xz]`` / ``.tgz``
    the same tree inside an archive, read once and cached in ``cache_dir`` (default
    ``$DAHP_CACHE``, else ``$XDG_CACHE_HOME/dahp`` or ``~/.cache/dahp``), keyed by the
    archive's path, size and mtime. Images that all share one size of at most
    :data:`IN_MEMORY_MAX_SIDE` px are decoded into memory; others are extracted into the cache.
``LIST.txt`` (or ``.list``, ``.lst``)
    the deep-hashing list format, one image a line: ``relative/path.jpg 0 1 0 ...`` (a path
    then a 0/1 label vector; several 1s make a multi-label image).
``TABLE.csv``
    a header line, a path column (``path``, ``image`` or ``file``; ``path_column=``) and
    either a class column (``label`` or ``class``; ``label_column=``) or 0/1 label columns
    (``label_columns=a,b,c``; by default all others when there is no class column). A class
    cell holds one name or a list of them, ``['Comedy', 'Drama']`` (a Python/JSON literal)
    or ``Comedy|Drama``, which makes the collection multi-label. A path naming no file is
    tried with ``extension=`` (e.g. ``.jpg``) and then each image extension appended, for
    tables of image ids.

Image paths in list and CSV files are relative to ``image_root`` (default: the file's
directory). Options travel as keywords or, for one-string interfaces like the CLI, as a
query suffix on the spec: ``photos.csv?path_column=file&label_column=species&image_root=/data``.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import io
import json
import os
import pickle
import tarfile
import warnings
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import IO

import numpy as np
from PIL import Image

from ..errors import DahpError
from ..serialization import atomic_write_npz
from .collection import IMAGE_EXTENSIONS, ImageCollection, load_digits, one_hot
from .transforms import ImageTooLarge, open_image

IN_MEMORY_MAX_SIDE = 64
"""Archive images no larger than this (both sides, one common size) are decoded into memory."""
CACHE_FORMAT = 1
PARTITION_NAMES = ("train", "val", "valid", "validation", "test")
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
LIST_SUFFIXES = (".txt", ".list", ".lst")
PATH_COLUMNS = ("path", "image", "file")
LABEL_COLUMNS = ("label", "labels", "class", "classes")
CIFAR10_BATCHES = {**{f"data_batch_{i}": "train" for i in range(1, 6)}, "test_batch": "test"}
_FILE_KINDS = ((ARCHIVE_SUFFIXES, "archive"), ((".csv",), "CSV file"), (LIST_SUFFIXES, "list file"))
_OPTIONS = ("image_root", "path_column", "label_column", "label_columns", "extension")
_KINDS = "'digits', 'cifar10', a directory, a .tar/.tar.gz/.tgz archive, a .txt list file or a .csv file"
# What PIL raises for unreadable files (UnidentifiedImageError is an OSError; broken PNGs raise SyntaxError).
_BAD_IMAGE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
_CACHE_ERRORS = (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile)


def default_cache_dir() -> Path:
    """Where decoded archives and downloads live unless a ``cache_dir`` is given."""
    if os.environ.get("DAHP_CACHE"):
        return Path(os.environ["DAHP_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dahp"


def load_source(
    spec: str,
    image_root: str | Path | None = None,
    cache_dir: str | Path | None = None,
    skip_bad: bool = False,
    *,
    path_column: str | None = None,
    label_column: str | None = None,
    label_columns: str | Sequence[str] | None = None,
    extension: str | None = None,
) -> ImageCollection:
    """Load the collection a spec names (see the module docstring for the spec syntax).

    With ``skip_bad`` every image is decoded once up front and unreadable ones are left
    out and listed in ``collection.skipped``; without it the first unreadable image stops
    the run with an error naming it (at load time for archives, at decode time for files).
    """
    target, options = _parse_spec(spec)
    if label_columns is not None and not isinstance(label_columns, str):
        label_columns = ",".join(label_columns)
    keywords = {"image_root": image_root, "path_column": path_column, "label_column": label_column,
                "label_columns": label_columns, "extension": extension}
    for name, value in keywords.items():
        if value is not None:
            if name in options:
                raise DahpError(f"data source {spec}: {name} is given both in the spec and as an option")
            options[name] = str(value)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    collection = _load_target(target, options, cache)
    if skip_bad:
        return drop_unreadable(collection)
    if collection.skipped:
        path, reason = collection.skipped[0]
        raise DahpError(
            f"cannot read image {path}: {reason} ({len(collection.skipped)} unreadable in {collection.source}; "
            "pass skip_bad=True / --skip-bad to leave them out)"
        )
    return collection


BUILTIN_SOURCES = ("digits", "cifar10", "cifar10-download")


def source_exists(spec: str) -> bool:
    """Whether ``spec`` names a built-in source or a path that exists from the current folder."""
    target, _ = _parse_spec(spec)
    return target in BUILTIN_SOURCES or Path(target).exists()


def resolve_source(spec: str) -> str | None:
    """``spec`` with its path (and an existing ``image_root=`` option) made absolute; None for a
    built-in source or a missing path. Recorded beside the spec as typed, it lets a model find
    its data when evaluated from another folder."""
    target, options = _parse_spec(spec)
    if target in BUILTIN_SOURCES or not Path(target).exists():
        return None
    if "image_root" in options and Path(options["image_root"]).exists():
        options["image_root"] = str(Path(options["image_root"]).resolve())
    query = "&".join(f"{key}={value}" for key, value in options.items())
    return str(Path(target).resolve()) + (f"?{query}" if query else "")


def _parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """Split ``target?key=value&...`` unless the whole spec is an existing path."""
    if "?" not in spec or Path(spec).exists():
        return spec, {}
    target, _, query = spec.partition("?")
    options: dict[str, str] = {}
    for item in query.split("&"):
        key, sep, value = item.partition("=")
        if not sep or key not in _OPTIONS:
            raise DahpError(
                f"data source {spec}: expected options like ?key=value with key in {list(_OPTIONS)}, got {item!r}"
            )
        options[key] = value
    return target, options


def _load_target(target: str, options: dict[str, str], cache: Path) -> ImageCollection:
    if target == "digits":
        _allow_options(target, options, ())
        return load_digits()
    if target in ("cifar10", "cifar10-download"):
        _allow_options(target, options, ())
        return download_cifar10(cache)
    path = Path(target)
    kind = next((kind for suffixes, kind in _FILE_KINDS if path.name.lower().endswith(suffixes)), "image folder")
    if not path.exists():
        raise DahpError(f"{kind} {target} does not exist (a data source is {_KINDS})")
    if path.is_dir():
        _allow_options(target, options, ())
        batches = _cifar_batch_dir(path)
        return load_cifar10_batches(batches) if batches is not None else load_image_tree(path)
    if kind == "archive":
        _allow_options(target, options, ())
        return load_archive(path, cache)
    if kind == "CSV file":
        _allow_options(target, options, _OPTIONS)
        return load_csv(path, **options)
    if kind == "list file":
        _allow_options(target, options, ("image_root",))
        return load_list_file(path, **options)
    raise DahpError(f"data source {target}: unrecognised file type; a data source is {_KINDS}")


def _allow_options(target: str, options: dict[str, str], allowed: Sequence[str]) -> None:
    extra = sorted(set(options) - set(allowed))
    if extra:
        raise DahpError(f"data source {target}: option(s) {extra} do not apply here (accepted: {list(allowed)})")


# --- decoding and bad images -------------------------------------------------------------


def _try_decode(source: Path | IO[bytes]) -> tuple[np.ndarray | None, str]:
    """Decode one image to (h, w, 3) uint8, or return None and why it is unreadable."""
    try:
        with open_image(source) as image:
            return np.asarray(image.convert("RGB")), ""
    except ImageTooLarge as exc:
        return None, str(exc)
    except _BAD_IMAGE as exc:
        return None, f"{type(exc).__name__}: {exc}"


def drop_unreadable(collection: ImageCollection, workers: int | None = None) -> ImageCollection:
    """Decode every image file once and keep the readable ones, so one bad file cannot stop a long run.

    The dropped files are appended to ``skipped``; in-memory collections are returned as they are.
    """
    if isinstance(collection.images, np.ndarray):
        return collection
    with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:
        problems = list(pool.map(lambda path: _try_decode(path)[1], collection.images))
    bad = [(str(path), reason) for path, reason in zip(collection.images, problems) if reason]
    if not bad:
        return collection
    if len(bad) == len(problems):
        raise DahpError(f"all {len(bad)} images of {collection.source} are unreadable, e.g. {bad[0][0]}: {bad[0][1]}")
    kept = collection.subset(np.array([i for i, reason in enumerate(problems) if not reason]))
    kept.skipped = collection.skipped + bad
    return kept


# --- image trees: directories and archives -----------------------------------------------


def _tree_layout(
    relative: Sequence[tuple[str, ...]], where: str
) -> tuple[list[int], np.ndarray, list[str], np.ndarray | None]:
    """Order, class index, class names and partition of image paths given relative to a tree root.

    Follows ImageFolder (files directly under the root are ignored, classes sorted by name),
    looks through one directory wrapping the whole tree, and reads a top level made only of
    train/val/test directories as the dataset's partition. The order is by partition
    (train, val, test), then class, then path, so it does not depend on listing order.
    """
    keep = [i for i, parts in enumerate(relative) if len(parts) >= 2 and not any(p.startswith(".") for p in parts)]
    depth = 0
    while (
        keep
        and len({relative[i][depth] for i in keep}) == 1
        and relative[keep[0]][depth].lower() not in PARTITION_NAMES
        and all(len(relative[i]) >= depth + 3 for i in keep)
    ):
        depth += 1
    partitioned = bool(keep) and all(relative[i][depth].lower() in PARTITION_NAMES for i in keep)
    if partitioned:
        keep = [i for i in keep if len(relative[i]) >= depth + 3]
    if not keep:
        raise DahpError(
            f"no images found under {where}: expected {where}/<class>/<image>.jpg or {where}/train/<class>/..."
        )
    level = depth + int(partitioned)

    def order_key(i: int) -> tuple[int, tuple[str, ...]]:
        return (PARTITION_NAMES.index(relative[i][depth].lower()) if partitioned else 0, relative[i][level:])

    order = sorted(keep, key=order_key)
    class_of = [relative[i][level] for i in order]
    names = sorted(set(class_of))
    index = {name: k for k, name in enumerate(names)}
    partition = np.array([relative[i][depth].lower() for i in order]) if partitioned else None
    return order, np.array([index[c] for c in class_of]), names, partition


def load_image_tree(root: str | Path) -> ImageCollection:
    """An ImageFolder tree on disk, with its train/test partition when it has one."""
    root = Path(root)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    order, classes, names, partition = _tree_layout([p.relative_to(root).parts for p in files], str(root))
    return ImageCollection([files[i] for i in order], one_hot(classes, len(names)), names, str(root), partition)


def load_archive(archive: str | Path, cache_dir: str | Path | None = None) -> ImageCollection:
    """An ImageFolder tree inside a tar archive, read once and then served from the cache.

    A cache that cannot be read or does not match what it claims (format, shapes, dtypes,
    counts, extracted files) is rebuilt rather than trusted. Unreadable members of an
    in-memory archive are recorded in ``skipped`` (``load_source`` decides whether to fail).
    """
    archive = Path(archive)
    cache_file = _cache_file(archive, Path(cache_dir) if cache_dir is not None else default_cache_dir())
    files_dir = cache_file.with_suffix("")
    if cache_file.exists():
        try:
            with np.load(cache_file, allow_pickle=False) as stored:
                return _collection_from_arrays(dict(stored), str(archive), files_dir)
        except _CACHE_ERRORS as exc:
            warnings.warn(f"cache {cache_file} is unusable ({exc}); rebuilding it from {archive}", stacklevel=2)
    arrays = _read_archive(archive, files_dir)
    collection = _collection_from_arrays(arrays, str(archive), files_dir)
    atomic_write_npz(cache_file, **arrays)
    return collection


def _cache_file(archive: Path, cache_dir: Path) -> Path:
    """One cache entry per archive version: a changed size or mtime gets a new key."""
    try:
        resolved = archive.resolve()
        stat = resolved.stat()
    except OSError as exc:
        raise DahpError(f"cannot read archive {archive}: {exc.strerror}") from None
    identity = f"{resolved}\n{stat.st_size}\n{stat.st_mtime_ns}\n{CACHE_FORMAT}"
    stem = archive.name
    for suffix in ARCHIVE_SUFFIXES:
        stem = stem.removesuffix(suffix)
    return cache_dir / "archives" / f"{stem}-{hashlib.sha256(identity.encode()).hexdigest()[:16]}.npz"


def _archive_images(archive: Path) -> Iterator[tuple[tuple[str, ...], bytes]]:
    """Stream ``(relative path parts, bytes)`` of the image members, refusing paths that escape."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                if not member.isfile() or not member.name.lower().endswith(IMAGE_EXTENSIONS):
                    continue
                parts = tuple(p for p in PurePosixPath(member.name).parts if p not in ("", "."))
                if member.name.startswith("/") or ".." in parts:
                    raise DahpError(f"archive {archive}: member {member.name} points outside the archive")
                handle = tar.extractfile(member)
                if handle is not None:
                    yield parts, handle.read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DahpError(f"cannot read archive {archive}: {exc}") from None


def _read_archive(archive: Path, files_dir: Path) -> dict[str, np.ndarray]:
    """Read the archive in one pass into the arrays the cache stores.

    Images are decoded while they are all small and of one size; the first one that is not
    switches to extracting every member into ``files_dir`` (decoded later, like any folder).
    """
    decoded: list[tuple[tuple[str, ...], bytes, np.ndarray | None, str]] = []
    extracted: list[tuple[str, ...]] | None = None
    shape: tuple[int, ...] | None = None
    for parts, data in _archive_images(archive):
        if extracted is None:
            pixels, problem = _try_decode(io.BytesIO(data))
            fits = pixels is None or (max(pixels.shape[:2]) <= IN_MEMORY_MAX_SIDE and shape in (None, pixels.shape))
            if fits:
                shape = shape if pixels is None else pixels.shape
                decoded.append((parts, data, pixels, problem))
                continue
            extracted = []
            for old_parts, old_data, _, _ in decoded:
                _write_member(files_dir, old_parts, old_data)
                extracted.append(old_parts)
            decoded = []
        _write_member(files_dir, parts, data)
        extracted.append(parts)
    if extracted is not None:
        order, classes, names, partition = _tree_layout(extracted, str(archive))
        content = {"paths": np.array(["/".join(extracted[i]) for i in order])}
        skipped: list[tuple[str, str]] = []
    else:
        readable = [item for item in decoded if item[2] is not None]
        skipped = [(f"{archive}:{'/'.join(parts)}", problem) for parts, _, pixels, problem in decoded if pixels is None]
        if decoded and not readable:
            raise DahpError(
                f"all {len(decoded)} images in {archive} are unreadable, e.g. {skipped[0][0]}: {skipped[0][1]}"
            )
        order, classes, names, partition = _tree_layout([item[0] for item in readable], str(archive))
        content = {"images": np.stack([readable[i][2] for i in order])}  # type: ignore[misc]
    arrays = {
        "format": np.int64(CACHE_FORMAT),
        "count": np.int64(len(order)),
        "labels": one_hot(classes, len(names)),
        "class_names": np.array(names),
        "skipped_paths": np.array([path for path, _ in skipped], dtype=str),
        "skipped_reasons": np.array([reason for _, reason in skipped], dtype=str),
        **content,
    }
    if partition is not None:
        arrays["partition"] = partition
    return arrays


def _write_member(files_dir: Path, parts: tuple[str, ...], data: bytes) -> None:
    target = files_dir.joinpath(*parts)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)


def _collection_from_arrays(arrays: dict[str, np.ndarray], source: str, files_dir: Path) -> ImageCollection:
    """Rebuild a collection from cache arrays, raising ValueError when they are inconsistent."""
    count = int(arrays["count"])
    labels, names = arrays["labels"], [str(name) for name in arrays["class_names"]]
    if int(arrays["format"]) != CACHE_FORMAT or labels.dtype != np.uint8 or labels.shape != (count, len(names)):
        raise ValueError(f"labels {labels.dtype}{labels.shape} do not match {count} images of {len(names)} classes")
    images: np.ndarray | list[Path]
    if "images" in arrays:
        images = arrays["images"]
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] != count or images.shape[3] != 3:
            raise ValueError(f"images {images.dtype}{images.shape} are not {count} RGB uint8 images")
    else:
        images = [files_dir / str(path) for path in arrays["paths"]]
        if len(images) != count or not all(path.is_file() for path in images):
            raise ValueError(f"the extracted images under {files_dir} are incomplete")
    partition = arrays.get("partition")
    if partition is not None and partition.shape != (count,):
        raise ValueError(f"partition {partition.shape} does not match {count} images")
    skipped = list(zip(arrays["skipped_paths"].tolist(), arrays["skipped_reasons"].tolist()))
    return ImageCollection(images, labels, names, source, partition, skipped)


# --- CIFAR-10 python batches ---------------------------------------------------------------


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a batch file cannot run code."""

    ALLOWED = {
        "_codecs": {"encode"},
        "numpy": {"ndarray", "dtype"},
        "numpy.core.multiarray": {"_reconstruct"},
        "numpy._core.multiarray": {"_reconstruct"},
        "numpy.core.numeric": {"_frombuffer"},
        "numpy._core.numeric": {"_frombuffer"},
    }

    def find_class(self, module: str, name: str) -> object:
        if name not in self.ALLOWED.get(module, ()):
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module.removeprefix("numpy.core.")
        return super().find_class(module, name)


def _read_batch(path: Path, *keys: bytes) -> list[object]:
    """Fields of a CIFAR python batch (a pickled dict with bytes keys)."""
    try:
        with path.open("rb") as handle:
            batch = _BatchUnpickler(handle, encoding="bytes").load()
    except FileNotFoundError:
        raise DahpError(
            f"{path} is missing: a CIFAR-10 python batch directory holds {', '.join(CIFAR10_BATCHES)} and batches.meta"
        ) from None
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError) as exc:
        raise DahpError(f"{path} is not a CIFAR python batch: {exc}") from None
    if not isinstance(batch, dict) or any(key not in batch for key in keys):
        raise DahpError(f"{path} is not a CIFAR python batch: expected a dict with the keys {list(keys)}")
    return [batch[key] for key in keys]


def _cifar_batch_dir(path: Path) -> Path | None:
    for candidate in (path, path / "cifar-10-batches-py"):
        if (candidate / "batches.meta").is_file():
            return candidate
    return None


def load_cifar10_batches(directory: str | Path) -> ImageCollection:
    """CIFAR-10's original python batches (torchvision's ``cifar-10-batches-py``), train then test."""
    directory = Path(directory)
    meta = directory / "batches.meta"
    (names_raw,) = _read_batch(meta, b"label_names")
    if not isinstance(names_raw, list) or not names_raw:
        raise DahpError(f"{meta}: expected b'label_names' to be a list of class names")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in names_raw]
    images, classes, partition = [], [], []
    for name, part in CIFAR10_BATCHES.items():
        path = directory / name
        data, labels = (np.asarray(field) for field in _read_batch(path, b"data", b"labels"))
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (len(data),):
            raise DahpError(
                f"{path}: expected b'data' as (n, 3072) uint8 and n b'labels', "
                f"got data {data.dtype}{data.shape} and labels {labels.shape}"
            )
        if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
            raise DahpError(f"{path}: labels must lie in 0..{len(names) - 1} (batches.meta names {len(names)} classes)")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        classes.append(labels.astype(np.int64))
        partition += [part] * len(data)
    return ImageCollection(
        np.ascontiguousarray(np.concatenate(images)),
        one_hot(np.concatenate(classes), len(names)),
        names,
        str(directory),
        np.array(partition),
    )


def download_cifar10(root: str | Path) -> ImageCollection:
    """CIFAR-10 from ``root/cifar-10-batches-py``, downloaded there by torchvision when absent."""
    root = Path(root)
    directory = root / "cifar-10-batches-py"
    if not all((directory / name).is_file() for name in (*CIFAR10_BATCHES, "batches.meta")):
        from torchvision.datasets import CIFAR10

        try:
            CIFAR10(root=str(root), train=True, download=True)
        except (OSError, RuntimeError, ValueError) as exc:  # URLError and socket errors are OSErrors
            raise DahpError(
                f"cannot download CIFAR-10 into {root}: {exc}. Without a network connection, place the python "
                f"batches in {directory}, or pass the path of a CIFAR-10 folder or .tar.gz archive instead"
            ) from None
    return load_cifar10_batches(directory)


# --- list files and CSV ------------------------------------------------------------------------


def _binary(value: str, where: str) -> int:
    if value not in ("0", "1"):
        raise DahpError(f"{where} is {value!r}: expected 0 or 1")
    return int(value)


def _existing_image(root: Path, relative: str, where: str, extensions: Sequence[str] = ()) -> Path:
    """``root / relative``, or failing that the first file named so with one of ``extensions`` appended."""
    path = root / relative
    if path.is_file():
        return path
    for suffix in extensions:
        candidate = path.with_name(path.name + suffix)
        if candidate.is_file():
            return candidate
    tried = f" (nor with {extensions[0]} or another image extension appended)" if extensions else ""
    raise DahpError(f"{where}: image {path} does not exist{tried}")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DahpError(f"{path} is not UTF-8 text: {exc}") from None
    except OSError as exc:
        raise DahpError(f"cannot read {path}: {exc.strerror}") from None


def load_list_file(path: str | Path, image_root: str | Path | None = None) -> ImageCollection:
    """The deep-hashing list format: ``relative/path.jpg 0 1 0 ...`` per line (blank lines skipped)."""
    path = Path(path)
    root = Path(image_root) if image_root else path.parent
    paths: list[Path] = []
    rows: list[list[int]] = []
    first_line = 0
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}:{number}"
        if len(fields) < 2:
            raise DahpError(f"{where}: expected an image path then 0/1 labels, got {line.strip()!r}")
        if not rows:
            first_line = number
        elif len(fields) - 1 != len(rows[0]):
            raise DahpError(f"{where}: expected {len(rows[0])} labels (as on line {first_line}), got {len(fields) - 1}")
        rows.append([_binary(value, f"{where}: label {k + 1}") for k, value in enumerate(fields[1:])])
        paths.append(_existing_image(root, fields[0], where))
    if not rows:
        raise DahpError(f"{path} lists no images: expected lines like 'relative/path.jpg 0 1 0'")
    labels = np.array(rows, dtype=np.uint8)
    return ImageCollection(paths, labels, [str(k) for k in range(labels.shape[1])], str(path))


def _column(header: list[str], wanted: str | None, defaults: Sequence[str], where: str, what: str) -> int | None:
    """Index of the named column (case-insensitive), or of the first default present; None if absent."""
    lowered = [name.lower() for name in header]
    for name in [wanted] if wanted else defaults:
        if name.lower() in lowered:
            return lowered.index(name.lower())
    if wanted:
        raise DahpError(f"{where}: no {what} column {wanted!r}; the header has {header}")
    return None


def _image_extensions(extension: str | None, where: str) -> list[str]:
    """Suffixes to try on a path naming no file: ``extension`` first, then every image extension (both cases)."""
    candidates = [suffix for ext in IMAGE_EXTENSIONS for suffix in (ext, ext.upper())]
    if extension is None:
        return candidates
    given = extension.strip()
    given = given if given.startswith(".") else "." + given
    if given == "." or "/" in given or "\\" in given:
        raise DahpError(f"{where}: extension must be a file suffix like .jpg, got {extension!r}")
    return [given, *(suffix for suffix in candidates if suffix != given)]


def _parse_list(text: str) -> object:
    """A Python or JSON list literal, parsed without running anything (None when it is not one)."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


def _class_names(cell: str, where: str) -> list[str]:
    """The class names in one cell: a name, a list literal ``['a', 'b']`` or ``a|b``."""
    text = cell.strip()
    expected = "expected a class name, a list like ['a', 'b'] or a|b"
    if not text:
        raise DahpError(f"{where} is empty: {expected}")
    if text[0] in "[(":
        parsed = _parse_list(text)
        if not isinstance(parsed, (list, tuple)) or not all(
            isinstance(item, (str, int)) and not isinstance(item, bool) for item in parsed
        ):
            raise DahpError(f"{where} holds {text!r}: {expected} (a list of quoted names or integers)")
        names = [str(item).strip() for item in parsed]
    else:
        names = [part.strip() for part in text.split("|")]
    names = [name for name in names if name]
    if not names:
        raise DahpError(f"{where} holds no class name ({text!r}): {expected}")
    return list(dict.fromkeys(names))


def _sorted_class_names(classes: list[list[str]]) -> list[str]:
    """Every distinct name; integer names sort as numbers (2 before 10), others alphabetically."""
    distinct = {name for names in classes for name in names}
    return sorted(distinct, key=lambda v: (0, int(v), "") if v.isdigit() else (1, 0, v))


def load_csv(
    path: str | Path,
    image_root: str | Path | None = None,
    path_column: str | None = None,
    label_column: str | None = None,
    label_columns: str | Sequence[str] | None = None,
    extension: str | None = None,
) -> ImageCollection:
    """A CSV with a header: a path column and a class column (names or lists of names), or 0/1 label columns.

    ``label_columns`` (``"a,b,c"`` or a sequence) picks the 0/1 columns; without it and
    without a class column every other column is one.  ``extension`` is tried first on
    paths that name no file, before the image extensions (ids without a suffix).
    """
    path = Path(path)
    root = Path(image_root) if image_root else path.parent
    if label_column is not None and label_columns is not None:
        raise DahpError(f"{path}: give label_column (a column of class names) or label_columns (0/1 columns), "
                        "not both")
    extensions = _image_extensions(extension, str(path))
    reader = csv.reader(io.StringIO(_read_text(path)))
    try:
        header = [name.strip() for name in next(reader, [])]
        if not header:
            raise DahpError(f"{path} is empty: expected a header line naming a path column and label column(s)")
        path_at = _column(header, path_column, PATH_COLUMNS, f"{path}:1", "path")
        if path_at is None:
            raise DahpError(
                f"{path}:1: no path column: expected one named {' / '.join(PATH_COLUMNS)} (or path_column=); "
                f"the header has {header}"
            )
        if label_columns is not None:
            names = label_columns.split(",") if isinstance(label_columns, str) else list(label_columns)
            if not names or not all(name.strip() for name in names):
                raise DahpError(f"{path}: label_columns must name columns like a,b,c, got {label_columns!r}")
            class_at = None
            label_at = [_column(header, name.strip(), (), f"{path}:1", "label") for name in names]
        else:
            class_at = _column(header, label_column, LABEL_COLUMNS, f"{path}:1", "label")
            label_at = [class_at] if class_at is not None else [i for i in range(len(header)) if i != path_at]
        if not label_at:
            raise DahpError(
                f"{path}:1: no label column: expected {' / '.join(LABEL_COLUMNS)} or 0/1 columns beside {header[path_at]!r}"
            )
        if path_at in label_at:
            raise DahpError(f"{path}:1: column {header[path_at]!r} cannot be both the path and a label column")
        paths: list[Path] = []
        classes: list[list[str]] = []
        rows: list[list[int]] = []
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise DahpError(f"{where}: expected {len(header)} fields as in the header, got {len(row)}")
            if class_at is None:
                rows.append([_binary(row[i].strip(), f"{where}: column {header[i]!r}") for i in label_at])
            else:
                classes.append(_class_names(row[class_at], f"{where}: the {header[class_at]!r} column"))
            if not row[path_at].strip():
                raise DahpError(f"{where}: the {header[path_at]!r} column is empty: expected an image path")
            paths.append(_existing_image(root, row[path_at].strip(), where, extensions))
    except csv.Error as exc:
        raise DahpError(f"{path}:{reader.line_num}: malformed CSV: {exc}") from None
    if not paths:
        raise DahpError(f"{path} lists no images: expected rows after the header")
    if class_at is None:
        return ImageCollection(paths, np.array(rows, dtype=np.uint8), [header[i] for i in label_at], str(path))
    names = _sorted_class_names(classes)
    index = {name: k for k, name in enumerate(names)}
    labels = np.zeros((len(classes), len(names)), dtype=np.uint8)
    for row_index, row_names in enumerate(classes):
        labels[row_index, [index[name] for name in row_names]] = 1
    return ImageCollection(paths, labels, names, str(path))
