"""Data sources as strings, checked and read without torch: names, options, files, headers, labels, caps.

A source is named ``"NAME[:ARG]"``: ``synthetic``, ``cifar10:DIR``, ``cifar100:DIR``,
``npz:FILE[?images=NAME&labels=NAME]`` or ``imagefolder:DIR`` (:func:`nas.data.load_data` documents each).
:func:`check_source` is the cheap pre-flight: it refuses what loading would refuse wherever that shows without
decoding images (npz arrays are checked from their ``.npy`` headers, an image folder from its listing), and says
what it learned (:class:`SourceSummary`). The readers of the CIFAR and npz formats live here too, as numpy: they
share the checks, and an npz labels array is read to count its classes before anything else is.

It imports no torch (numpy, the standard library and :mod:`search_spaces` only) because the ledger needs it: a
campaign checks its source and sizes its hold-out split (:func:`holdout_count`) before it creates a study or
starts Ray, in processes that never train. :mod:`nas.data` turns what is read here into tensors at the proxy
resolution, and batches them.
"""

from __future__ import annotations

import codecs
import math
import pickle
import re
import stat
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from search_spaces.checks import is_int
from search_spaces.spec import MAX_IMAGE_SIZE

# A classifier head is num_classes wide: a stray label of 5,000,000 must not build a 5,000,001-way head.
MAX_CLASSES = 100_000
# With one class every candidate's accuracy A is 1.0: the search would rank candidates by step time and size alone.
MIN_CLASSES = 2
SYNTHETIC_OPTIONS = ("num_classes", "num_images", "image_size")
SYNTHETIC_MINIMUM = {"num_classes": MIN_CLASSES, "num_images": 1, "image_size": 1}
SYNTHETIC_MAXIMUM = {"num_classes": MAX_CLASSES, "num_images": 100_000_000, "image_size": MAX_IMAGE_SIZE}
# A dataset is held whole as uint8 (twice while it is resized): CIFAR-10 is 150 MiB, ImageNet at 128 px 59 GiB.
# The same budget caps every npz array, checked from its header before anything is allocated or decompressed.
MAX_DATASET_BYTES = 64 << 30
NPZ_ARRAYS = ("images", "labels")
# npz:FILE?flip=yes says horizontal flips keep the labels (photographs); without it an npz file is not flipped,
# since its content is unknown and a mirrored digit, letter or oriented pattern can be another class.
NPZ_FLIP_VALUES = {"yes": True, "no": False}
NPZ_OPTIONS = (*NPZ_ARRAYS, "flip")
# Whether each source's mirror images keep their labels, for augment "auto" (nas.recipe.resolve_recipe). The
# synthetic gratings' orientations and blob positions are their classes, so a flip changes the class.
_SOURCE_FLIPS = {"synthetic": False, "cifar10": True, "cifar100": True, "imagefolder": True}
# Array names tried, in order, for an npz file whose source names none: this project's, then Keras' (mnist.npz).
NPZ_CONVENTIONS = (("images", "labels"), ("x_train", "y_train"))
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".ppm", ".tif", ".tiff", ".webp")
DEFAULT_IMAGEFOLDER_SIZE = 64

_CIFAR_SIDE = 32
_CIFAR_BATCH_IMAGES = 10_000  # images per batch file of the CIFAR python release
_CIFAR100_IMAGES = 50_000
_PREFLIGHT_LABEL_BYTES = 64 << 20  # check_source reads an npz labels array up to this size to check its values
_NPZ_READ_CHUNK = 16 << 20  # bytes decompressed per read into an array's buffer
_SHOWN_LABELS = 10  # missing labels listed in a message before the rest is only counted


class DataError(ValueError):
    """A data source that cannot be used: bad source string, missing or malformed files, invalid contents."""


@dataclass(frozen=True)
class SourceSummary:
    """What :func:`check_source` learns about a source without decoding images; None where that is not cheap."""

    num_images: int | None
    in_channels: int | None
    num_classes: int | None


def check_source(source: str, *, image_size: int | None = None, files: bool = True) -> SourceSummary:
    """Refuses a source that :func:`nas.data.load_data` would refuse, as far as that shows without decoding images.

    Always checks the source name and its options (synthetic options from :data:`SYNTHETIC_MINIMUM` up to
    :data:`SYNTHETIC_MAXIMUM`, the dataset at ``image_size`` up to :data:`MAX_DATASET_BYTES`, npz array names).
    With ``files`` it also looks at the files: that they exist, the CIFAR batch files, the npz arrays' ``.npy``
    headers (and the labels' values when that array is at most 64 MiB), the imagefolder's class folders and image
    count; at least :data:`MIN_CLASSES` classes wherever the count is known. A campaign runs this before it
    creates its study or starts Ray, so a bad source leaves nothing behind. Returns what it learned
    (:class:`SourceSummary`), for checks such as a batch larger than the dataset.
    """
    if not isinstance(source, str):
        raise DataError(f"source must be a string 'NAME[:ARG]', got {source!r}")
    name, _, argument = source.partition(":")
    if name not in _CHECKS:
        raise DataError(f"unknown data source {name!r} in {source!r}; allowed sources: {', '.join(SOURCE_NAMES)}")
    return _CHECKS[name](argument, image_size, files)


def source_flips(source: str) -> bool:
    """Whether horizontal flips keep ``source``'s labels: True for photographs (CIFAR, an image folder), False for
    the synthetic gratings, and for an npz file only with its ``flip=yes`` option."""
    check_source(source, files=False)
    name, _, argument = source.partition(":")
    if name == "npz":
        return _npz_flip(argument)
    return _SOURCE_FLIPS[name]


def flip_rule(source: str) -> str:
    """Why augment ``auto`` mirrors ``source``'s training images or not (:func:`source_flips`), in words."""
    name, _, argument = source.partition(":")
    if name == "npz":
        if _npz_flip(argument):
            return "its source says flip=yes: mirror images keep its labels"
        return "npz files are mirrored only with ?flip=yes: say it for photographs, not for digits or letters"
    if name == "synthetic":
        return "the synthetic patterns' orientations are their classes: not mirrored"
    return "photographs keep their labels when mirrored"


def npz_unused_arrays(source: str) -> tuple[str, ...]:
    """The arrays of an npz source's file that a run does not read (a Keras file's ``x_test``/``y_test``), so that
    they can be named rather than ignored in silence; () for other sources."""
    name, _, argument = source.partition(":")
    if name != "npz":
        return ()
    file, given = _npz_argument(argument)
    path = _existing_file("npz", file)
    with _open_npz(path) as archive:
        present = [info.filename.removesuffix(".npy") for info in archive.infolist()
                   if not info.filename.endswith("/")]
    used = set(_npz_array_names(path, present, given).values())
    return tuple(array for array in present if array not in used)


def holdout_count(count: int, val_fraction: float) -> int:
    """Images held out for accuracy from a source of ``count``: ``round(val_fraction * count)``, at least 1."""
    return max(1, round(val_fraction * count))


def check_dataset_bytes(source: str, count: int, channels: int, image_size: int) -> None:
    """Refuses ``count`` uint8 images of ``channels`` x ``image_size``² pixels beyond :data:`MAX_DATASET_BYTES`."""
    size = count * channels * image_size * image_size
    if size > MAX_DATASET_BYTES:
        raise DataError(
            f"data source {source!r}: {count:,} images of {channels}x{image_size}x{image_size} pixels are "
            f"{size / 2**30:,.1f} GiB; the limit is {MAX_DATASET_BYTES / 2**30:.0f} GiB (fewer or smaller images)"
        )


# ----------------------------------------------------------------------------------------------- files


def _existing_file(source: str, argument: str) -> Path:
    """The file the source names; refuses a missing path and one that is not a regular file (/dev/zero, a FIFO)."""
    if not argument:
        raise DataError(f"{source} needs a file: '{source}:FILE'")
    path = Path(argument).expanduser()
    mode = _file_mode(source, path)
    if mode is None:
        raise DataError(f"{source}: file {path} does not exist")
    if not stat.S_ISREG(mode):
        raise DataError(f"{source}: {path} is not a regular file (it is a {_file_kind(mode)}); give a file")
    return path


def existing_directory(source: str, argument: str) -> Path:
    """The directory the source names; refuses a missing path and one that is not a directory."""
    if not argument:
        raise DataError(f"{source} needs a directory: '{source}:DIR'")
    directory = Path(argument).expanduser()
    mode = _file_mode(source, directory)
    if mode is None:
        raise DataError(f"{source}: directory {directory} does not exist")
    if not stat.S_ISDIR(mode):
        raise DataError(f"{source}: {directory} is not a directory (it is a {_file_kind(mode)}); give a directory")
    return directory


def _file_mode(source: str, path: Path) -> int | None:
    """``path``'s mode (links followed), None when it does not exist; any other failure is refused by name."""
    try:
        return path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as error:
        raise DataError(f"{source}: cannot access {path}: {error.strerror or error}") from None


def _file_kind(mode: int) -> str:
    kinds = {stat.S_ISDIR: "directory", stat.S_ISCHR: "character device", stat.S_ISBLK: "block device",
             stat.S_ISFIFO: "FIFO", stat.S_ISSOCK: "socket", stat.S_ISREG: "regular file"}
    return next((kind for test, kind in kinds.items() if test(mode)), "special file")


# ----------------------------------------------------------------------------------------------- labels


def check_classes(subject: str, classes: Sequence[str]) -> None:
    """Refuses a source with fewer than :data:`MIN_CLASSES` classes, in one line naming ``subject`` (the source)
    and ``classes`` (what was found: class folder names, label values): with a single class every candidate
    scores accuracy 1.0, so the search would silently rank by step time and size alone."""
    if len(classes) < MIN_CLASSES:
        found = f"{len(classes)} class{'' if len(classes) == 1 else 'es'}"
        raise DataError(
            f"{subject}: found {found} ({', '.join(classes) or 'none'}); at least {MIN_CLASSES} are needed, "
            "since with one every candidate's accuracy is 1.0"
        )


def _check_label_range(labels: np.ndarray, field: str) -> None:
    """Labels in [0, MAX_CLASSES), compared in their own dtype: a uint64 label 2**63 + 5 is reported as itself."""
    if labels.size == 0:
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0:
        raise DataError(f"{field} must be >= 0, got {low}; relabel the classes as 0..K-1")
    if high >= MAX_CLASSES:
        raise DataError(
            f"{field} must be below {MAX_CLASSES:,} (at most {MAX_CLASSES:,} classes), got {high}; "
            "relabel the classes as 0..K-1"
        )


def _count_classes(labels: np.ndarray, field: str) -> int:
    """K = largest label + 1, for int64 labels in [0, MAX_CLASSES) that must be exactly the set 0..K-1.

    A gap would silently train a head with outputs for classes that never occur ({0, 999} -> 1000 classes).
    """
    counts = np.bincount(labels, minlength=1)
    missing = np.flatnonzero(counts == 0)
    if missing.size:
        shown = ", ".join(map(str, missing[:_SHOWN_LABELS].tolist()))
        if missing.size > _SHOWN_LABELS:
            shown += f", ... ({missing.size:,} missing in all)"
        raise DataError(
            f"{field} must be exactly the classes 0..{counts.size - 1} (largest label + 1 = {counts.size:,} "
            f"classes), but labels {shown} do not occur; relabel the classes as 0..K-1"
        )
    return counts.size


# ----------------------------------------------------------------------------------------------- synthetic


def _check_synthetic(argument: str, image_size: int | None, files: bool) -> SourceSummary:
    options = synthetic_options(argument)
    native_size = options.get("image_size", image_size or 32)
    num_images = options.get("num_images", 10000)
    check_dataset_bytes(f"synthetic:{argument}", num_images, 3, max(native_size, image_size or 0))
    return SourceSummary(num_images, 3, options.get("num_classes", 10))


def synthetic_options(argument: str) -> dict[str, int]:
    """``num_classes=10,num_images=500`` as a dict; refuses unknown, repeated, malformed, too-small (fewer than
    :data:`MIN_CLASSES` classes) and too-large options."""
    options: dict[str, int] = {}
    for item in filter(None, argument.split(",")):
        key, separator, value = item.partition("=")
        key = key.strip()
        if key not in SYNTHETIC_OPTIONS:
            raise DataError(f"unknown synthetic option {key!r}; allowed options: {', '.join(SYNTHETIC_OPTIONS)}")
        if not separator or not re.fullmatch(r"\s*\d+\s*", value):
            raise DataError(f"synthetic option {key} must be a positive integer 'key=value', got {item!r}")
        if key in options:
            raise DataError(f"synthetic option {key} is given twice in {argument!r}")
        options[key] = int(value)
        if options[key] < SYNTHETIC_MINIMUM[key]:
            raise DataError(f"synthetic option {key} must be an integer >= {SYNTHETIC_MINIMUM[key]}, got {options[key]}")
        if options[key] > SYNTHETIC_MAXIMUM[key]:
            raise DataError(f"synthetic option {key} must be at most {SYNTHETIC_MAXIMUM[key]:,}, got {options[key]:,}")
    return options


# ----------------------------------------------------------------------------------------------- CIFAR


def read_cifar10(argument: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, 3, 32, 32) images and int64 labels of every ``data_batch_N`` file in the directory, in order of N.

    ``test_batch`` is never read.
    """
    batches = [_read_cifar_batch(path, b"labels") for path in _cifar10_batch_files(argument)]
    return np.concatenate([images for images, _ in batches]), np.concatenate([labels for _, labels in batches])


def read_cifar100(argument: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, 3, 32, 32) images and int64 fine labels of the directory's ``train`` file (``test`` is never read)."""
    return _read_cifar_batch(_cifar100_train_file(argument), b"fine_labels")


def _check_cifar10(argument: str, image_size: int | None, files: bool) -> SourceSummary:
    if not files:
        return SourceSummary(None, 3, 10)
    return SourceSummary(_CIFAR_BATCH_IMAGES * len(_cifar10_batch_files(argument)), 3, 10)


def _cifar10_batch_files(argument: str) -> list[Path]:
    """The ``data_batch_N`` files in the directory, in order of N; refuses a directory without any."""
    directory = existing_directory("cifar10", argument)
    batch_files = sorted(
        (path for path in directory.iterdir() if re.fullmatch(r"data_batch_\d+", path.name)),
        key=lambda path: int(path.name.rsplit("_", 1)[1]),
    )
    if not batch_files:
        raise DataError(f"cifar10: no data_batch_* files in {directory}")
    return batch_files


def _check_cifar100(argument: str, image_size: int | None, files: bool) -> SourceSummary:
    if not files:
        return SourceSummary(None, 3, 100)
    _cifar100_train_file(argument)
    return SourceSummary(_CIFAR100_IMAGES, 3, 100)


def _cifar100_train_file(argument: str) -> Path:
    path = existing_directory("cifar100", argument) / "train"
    if not path.is_file():
        raise DataError(f"cifar100: training file {path} does not exist")
    return path


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles CIFAR's python batches without running code: only numpy array reconstruction is importable.

    A CIFAR batch is a dict of bytes/str keys, lists of ints and one ndarray. Pickle can call any importable
    global, so a hostile file could run ``os.system``; this unpickler resolves only the globals numpy uses to
    rebuild an array (``_reconstruct``/``ndarray``/``dtype`` up to protocol 4, ``_frombuffer`` for protocol 5,
    under both the numpy 1 and numpy 2 module names) and ``_codecs.encode``, which Python 3 uses for bytes in
    protocols 0-2 and which only converts a string.
    """

    def find_class(self, module: str, name: str) -> Any:
        allowed = _SAFE_PICKLE_GLOBALS.get((module, name))
        if allowed is None:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
        return allowed


def _safe_pickle_globals() -> dict[tuple[str, str], Any]:
    """The globals a CIFAR batch may name, resolved from numpy's own pickling (whatever module numpy uses)."""
    reconstruct = np.zeros(1).__reduce__()[0]
    from_buffer = np.zeros(1).__reduce_ex__(5)[0]
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.numeric", "_frombuffer")] = from_buffer
    allowed[("_codecs", "encode")] = codecs.encode
    return allowed


_SAFE_PICKLE_GLOBALS = _safe_pickle_globals()


def _read_cifar_batch(path: Path, labels_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, 3, 32, 32) images and int64 labels from one CIFAR python batch file."""
    try:
        with path.open("rb") as file:
            batch = _RestrictedUnpickler(file, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as error:
        raise DataError(f"{path} is not a readable CIFAR python batch: {error}") from error
    if not isinstance(batch, dict):
        raise DataError(f"{path} must hold a dict, got {type(batch).__name__}")
    # Python 2 pickles read with encoding="bytes" have bytes keys; a file written by Python 3 may have str keys.
    batch = {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in batch.items()}
    labels_name = labels_key.decode()
    for key in ("data", labels_name):
        if key not in batch:
            raise DataError(f"{path} lacks the key b{key!r}; keys present: {sorted(map(str, batch))}")
    data = batch["data"]
    pixels = 3 * _CIFAR_SIDE * _CIFAR_SIDE
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != pixels:
        description = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: b'data' must be a uint8 (N, {pixels}) array, got {description}")
    labels = _integer_labels(batch[labels_name], f"{path}: b{labels_name!r}")
    if labels.shape[0] != data.shape[0]:
        raise DataError(f"{path}: {data.shape[0]} images but {labels.shape[0]} labels")
    # Each row is the red plane, then green, then blue, each row-major: CHW order.
    return data.reshape(-1, 3, _CIFAR_SIDE, _CIFAR_SIDE), labels


def _integer_labels(labels: Any, field: str) -> np.ndarray:
    """CIFAR labels (a list or 1-D array of integers) as int64, range-checked before the cast."""
    if isinstance(labels, list) and all(is_int(label) for label in labels):
        try:
            labels = np.asarray(labels, dtype=np.int64)
        except OverflowError:  # a Python int beyond 64 bits: an object array keeps it exact for the range check
            labels = np.asarray(labels, dtype=object)
    elif not (isinstance(labels, np.ndarray) and labels.ndim == 1 and np.issubdtype(labels.dtype, np.integer)):
        description = f"{labels.dtype} {labels.shape}" if isinstance(labels, np.ndarray) else type(labels).__name__
        raise DataError(f"{field} must be a list or 1-D array of integers, got {description}")
    _check_label_range(labels, field)
    return labels.astype(np.int64).reshape(-1)


# ----------------------------------------------------------------------------------------------- npz


def read_npz(argument: str) -> tuple[np.ndarray, np.ndarray, int]:
    """uint8 (N, C, S, S) images, int64 labels and the number of classes of ``FILE[?images=NAME&labels=NAME]``.

    Both arrays' headers are checked before either is read, and neither is decompressed past its header's size.
    """
    file, given = _npz_argument(argument)
    path = _existing_file("npz", file)
    with _open_npz(path) as archive:
        images_header, labels_header = _npz_headers(path, archive, given)
        images = _read_npy(path, archive, images_header)
        labels = _read_npy(path, archive, labels_header).reshape(-1)
    num_classes = _npz_classes(labels, labels_header.field(path))
    if images.ndim == 3:
        images = images[..., np.newaxis]
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2)), labels.astype(np.int64), num_classes


def _check_npz(argument: str, image_size: int | None, files: bool) -> SourceSummary:
    """The npz arrays' headers (and the labels' values when they are small), without reading the images."""
    file, given = _npz_argument(argument)
    if not files:
        return SourceSummary(None, None, None)
    path = _existing_file("npz", file)
    num_classes = None
    with _open_npz(path) as archive:
        images, labels = _npz_headers(path, archive, given)
        if labels.nbytes <= _PREFLIGHT_LABEL_BYTES:
            num_classes = _npz_classes(_read_npy(path, archive, labels).reshape(-1), labels.field(path))
    channels = images.shape[3] if len(images.shape) == 4 else 1
    if image_size is not None:
        check_dataset_bytes(f"npz:{argument}", images.shape[0], channels, image_size)
    return SourceSummary(images.shape[0], channels, num_classes)


def _npz_argument(argument: str) -> tuple[str, dict[str, str]]:
    """``FILE?images=NAME&labels=NAME&flip=yes`` -> the file and the array names given (``flip`` is read by
    :func:`_npz_flip`); syntax only, no file is read.

    The options follow the last ``?``, so a file name holding a ``?`` is written with a trailing one.
    """
    file, options = _npz_options(argument)
    return file, {key: value for key, value in options.items() if key in NPZ_ARRAYS}


def _npz_flip(argument: str) -> bool:
    return NPZ_FLIP_VALUES[_npz_options(argument)[1].get("flip", "no")]


def _npz_options(argument: str) -> tuple[str, dict[str, str]]:
    file, separator, query = argument.rpartition("?")
    if not separator:
        return argument, {}
    options: dict[str, str] = {}
    for item in filter(None, query.split("&")):
        key, equals, value = item.partition("=")
        if key not in NPZ_OPTIONS:
            raise DataError(
                f"unknown npz option {key!r} in 'npz:{argument}'; allowed options: {', '.join(NPZ_OPTIONS)} "
                "(as in 'npz:FILE?images=x_train&labels=y_train&flip=no')"
            )
        if not equals or not value:
            raise DataError(f"npz option {key} needs an array name, '{key}=NAME', got {item!r}" if key != "flip"
                            else f"npz option flip needs a value, 'flip=yes' or 'flip=no', got {item!r}")
        if key == "flip" and value not in NPZ_FLIP_VALUES:
            raise DataError(f"npz option flip must be one of {', '.join(NPZ_FLIP_VALUES)}, got {value!r} in "
                            f"'npz:{argument}'")
        if key in options:
            raise DataError(f"npz option {key} is given twice in 'npz:{argument}'")
        options[key] = value
    return file, options


def _open_npz(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        with path.open("rb") as file:
            if file.read(len(np.lib.format.MAGIC_PREFIX)) == np.lib.format.MAGIC_PREFIX:
                raise DataError(
                    f"{path} must be an .npz archive with arrays 'images' and 'labels', got a single .npy array"
                ) from None
        raise DataError(f"{path} is not a readable .npz archive of arrays: {error}") from error


@dataclass(frozen=True)
class _NpyHeader:
    """One array of an npz archive as its ``.npy`` header describes it."""

    role: str  # "images" or "labels"
    name: str  # the array's name in the archive
    member: zipfile.ZipInfo
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    offset: int  # bytes of the header before the data

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def field(self, path: Path) -> str:
        """How messages name this array: ``FILE: labels (array 'y_train')``."""
        return f"{path}: {self.role} (array {self.name!r})"


def _npz_headers(path: Path, archive: zipfile.ZipFile, given: dict[str, str]) -> tuple[_NpyHeader, _NpyHeader]:
    """The images' and labels' headers, each checked alone and then against each other, nothing else read."""
    members = {
        info.filename.removesuffix(".npy"): info for info in archive.infolist() if not info.filename.endswith("/")
    }
    names = _npz_array_names(path, list(members), given)
    images, labels = (_npy_header(path, archive, members[names[role]], role, names[role]) for role in NPZ_ARRAYS)
    if not (len(images.shape) == 3 or (len(images.shape) == 4 and images.shape[3] in (1, 3))):
        raise DataError(
            f"{images.field(path)} must be NHWC with 1 or 3 channels, or NHW, got shape {images.shape}"
        )
    if images.shape[1] != images.shape[2]:
        raise DataError(
            f"{images.field(path)} must be square, got height {images.shape[1]} and width {images.shape[2]}"
        )
    if images.shape[0] == 0:
        raise DataError(f"{images.field(path)} holds no images")
    if not (len(labels.shape) == 1 or (len(labels.shape) == 2 and labels.shape[1] == 1)):
        raise DataError(f"{labels.field(path)} must have shape (N,) or (N, 1), got {labels.shape}")
    if labels.shape[0] != images.shape[0]:
        raise DataError(f"{path}: {images.shape[0]} images but {labels.shape[0]} labels")
    return images, labels


def _npz_array_names(path: Path, available: list[str], given: dict[str, str]) -> dict[str, str]:
    """Role -> array name: the names given, the rest from the first convention whose arrays are all present."""
    absent = [f"{role}={name}" for role, name in given.items() if name not in available]
    if absent:
        raise DataError(f"{path} has no array named as in {', '.join(absent)}; arrays present: {sorted(available)}")
    for convention in NPZ_CONVENTIONS:
        names = {**dict(zip(NPZ_ARRAYS, convention)), **given}
        if all(name in available for name in names.values()):
            return names
    raise DataError(
        f"{path} has neither arrays 'images' and 'labels' nor Keras-style 'x_train' and 'y_train'; arrays "
        f"present: {sorted(available)}; name them as in 'npz:{path}?images=NAME&labels=NAME'"
    )


def _npy_header(path: Path, archive: zipfile.ZipFile, member: zipfile.ZipInfo, role: str, name: str) -> _NpyHeader:
    """Reads and checks one array's header: dtype for its role, size within the budget and agreeing with the
    archive's declared size, so a forged header (10^9 images) or a decompression bomb is refused before any
    allocation or inflation beyond the header itself."""
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    try:
        with archive.open(member) as file:
            version = np.lib.format.read_magic(file)
            if version not in readers:
                raise ValueError(f".npy format version {version[0]}.{version[1]} is not supported (only 1.0, 2.0)")
            shape, fortran_order, dtype = readers[version](file)
            header = _NpyHeader(role, name, member, shape, dtype, fortran_order, file.tell())
    except (OSError, ValueError, EOFError, NotImplementedError, zipfile.BadZipFile, zlib.error) as error:
        raise DataError(f"{path}: array {name!r} is not a readable .npy array: {error}") from error
    _check_npy_header(path, header)
    return header


def _check_npy_header(path: Path, header: _NpyHeader) -> None:
    field = header.field(path)
    if header.role == "images" and header.dtype != np.uint8:
        raise DataError(f"{field} must be uint8, got {header.dtype}; store pixel values 0..255 as uint8")
    if header.role == "labels" and header.dtype.kind not in "iu":
        raise DataError(f"{field} must be integers, got {header.dtype}; store class indices 0..K-1 as integers")
    if any(side < 0 for side in header.shape):
        raise DataError(f"{field}: its .npy header declares a negative shape {header.shape}; the file is damaged")
    if header.nbytes > MAX_DATASET_BYTES:
        raise DataError(
            f"{field} of shape {header.shape} and dtype {header.dtype} is {header.nbytes / 2**30:,.1f} GiB; the "
            f"limit is {MAX_DATASET_BYTES / 2**30:.0f} GiB (fewer or smaller images)"
        )
    if header.offset + header.nbytes != header.member.file_size:
        raise DataError(
            f"{field}: its .npy header declares {header.offset + header.nbytes:,} bytes but the archive member "
            f"holds {header.member.file_size:,}; the file is damaged or forged: write it again with numpy.savez"
        )


def _read_npy(path: Path, archive: zipfile.ZipFile, header: _NpyHeader) -> np.ndarray:
    """The array's data, inflated straight into one buffer of the checked size: never a byte past it."""
    buffer = np.empty(header.nbytes, dtype=np.uint8)
    view = memoryview(buffer)
    try:
        with archive.open(header.member) as file:
            file.read(header.offset)
            filled = 0
            while filled < header.nbytes:
                count = file.readinto(view[filled : filled + _NPZ_READ_CHUNK])
                if not count:
                    raise EOFError(f"the data ends after {filled:,} of {header.nbytes:,} bytes")
                filled += count
    except (OSError, ValueError, EOFError, NotImplementedError, zipfile.BadZipFile, zlib.error) as error:
        raise DataError(f"{header.field(path)}: cannot read its data: {error}") from error
    if header.fortran_order:
        return buffer.view(header.dtype).reshape(header.shape[::-1]).transpose()
    return buffer.view(header.dtype).reshape(header.shape)


def _npz_classes(labels: np.ndarray, field: str) -> int:
    """The number of classes of an npz labels array: its values must be exactly 0..K-1, 2 <= K <= MAX_CLASSES."""
    _check_label_range(labels, field)
    num_classes = _count_classes(labels.astype(np.int64), field)
    check_classes(field, [f"label {label}" for label in range(num_classes)])
    return num_classes


# ----------------------------------------------------------------------------------------------- imagefolder


def _check_imagefolder(argument: str, image_size: int | None, files: bool) -> SourceSummary:
    """Class folders and image files counted, no image opened: decoding is the loader's (cached) work."""
    if not files:
        return SourceSummary(None, 3, None)
    classes, images = list_image_folder(existing_directory("imagefolder", argument))
    check_dataset_bytes(f"imagefolder:{argument}", len(images), 3, image_size or DEFAULT_IMAGEFOLDER_SIZE)
    return SourceSummary(len(images), 3, len(classes))


def list_image_folder(directory: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names (sorted subfolders, at least :data:`MIN_CLASSES`) and (image path, class index) pairs, files
    sorted within each class."""
    classes = sorted(entry.name for entry in directory.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    if not classes:
        raise DataError(f"imagefolder: {directory} has no class subfolders (expected DIR/<class_name>/<images>)")
    check_classes(f"imagefolder: {directory}", [f"class folder {name!r}" for name in classes])
    if len(classes) > MAX_CLASSES:
        raise DataError(f"imagefolder: {directory} has {len(classes):,} class folders; at most {MAX_CLASSES:,}")
    files = []
    for label, name in enumerate(classes):
        class_files = sorted(
            path
            for path in (directory / name).rglob("*")
            if path.suffix.lower() in IMAGE_EXTENSIONS
            and not any(part.startswith(".") for part in path.relative_to(directory).parts)
            and path.is_file()
        )
        if not class_files:
            raise DataError(
                f"imagefolder: class folder {directory / name} holds no images with extensions {IMAGE_EXTENSIONS}"
            )
        files.extend((path, label) for path in class_files)
    return classes, files


_CHECKS: dict[str, Callable[[str, int | None, bool], SourceSummary]] = {  # (argument, image_size, files)
    "synthetic": _check_synthetic,
    "cifar10": _check_cifar10,
    "cifar100": _check_cifar100,
    "npz": _check_npz,
    "imagefolder": _check_imagefolder,
}
SOURCE_NAMES = tuple(_CHECKS)
