"""Datasets as uint8 tensors at the proxy resolution, and mini-batches augmented on the training device.

A NAS campaign trains hundreds of candidates for a few epochs each, so data must never be the bottleneck
(DESIGN.md section 4): a dataset is decoded and resized once, kept whole as uint8 NCHW tensors (on the training
device during training), and every batch is cut, augmented and normalized there by a handful of vectorized
kernels. Accuracy comes from a seeded hold-out split of the *training* data ("minival", as in the EfficientNetV2
search); no source's test split is ever read.

Sources (:func:`load_data`) are named ``"NAME[:ARG]"``: ``synthetic``, ``cifar10:DIR``, ``cifar100:DIR``,
``npz:FILE[?images=NAME&labels=NAME]`` and ``imagefolder:DIR``. Their names, options and files are checked, and
the CIFAR and npz formats read, by :mod:`nas.sources`, which imports no torch so that a campaign can run the
same checks (:func:`nas.sources.check_source`) before Ray starts; this module makes tensors of what it reads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import struct
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from nas.augment import rand_augment
from nas.progressive import RANDAUGMENT_MAX_MAGNITUDE
from nas.recipe import AUGMENTATIONS
from nas.sources import (
    DEFAULT_IMAGEFOLDER_SIZE,
    DataError,
    check_classes,
    check_dataset_bytes,
    check_source,
    existing_directory,
    holdout_count,
    list_image_folder,
    read_cifar10,
    read_cifar100,
    read_npz,
    source_flips,
    synthetic_options,
)
from search_spaces.checks import check_choice, check_int, check_real
from search_spaces.files import write_file

CACHE_DIRNAME = ".nas-cache"

_RESIZE_CHUNK = 1024  # images resized per interpolate call: bounds the float32 temporary to ~1024 * C * H * W * 4 bytes
_SYNTHETIC_CHUNK = 2048  # images rendered at a time, for the same reason


@dataclass(frozen=True, eq=False, repr=False)
class ImageData:
    """A dataset at the proxy resolution: uint8 NCHW tensors for a training split and a held-out split.

    ``mean`` and ``std`` are per-channel statistics of ``train_images`` in [0, 1] units, the normalization
    that :class:`DeviceBatches` applies. The hold-out split (``val_*``) is what a candidate's accuracy is
    measured on; it comes from the source's training data, unless ``evaluation`` names another source that it is
    the whole of (a test set: :func:`load_data_with_evaluation`). ``flips`` says whether a horizontally mirrored
    image keeps its label (photographs: yes; digits, letters, oriented patterns: no): augment ``auto`` flips only
    then.
    """

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flips: bool = True
    evaluation: str | None = None

    @property
    def evaluated_on(self) -> str:
        """What the ``val_*`` images are, in words: ``the hold-out of SOURCE`` or the evaluation source."""
        return self.evaluation if self.evaluation is not None else f"the hold-out of {self.name}"

    def __post_init__(self) -> None:
        # Metadata checks only (no reductions), so constructing one on an accelerator never synchronizes.
        for split in ("train", "val"):
            images, labels = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[2] != images.shape[3]:
                raise DataError(
                    f"{split}_images must be a uint8 (N, C, S, S) tensor, got {images.dtype} {tuple(images.shape)}"
                )
            if labels.dtype != torch.int64 or labels.shape != images.shape[:1]:
                raise DataError(
                    f"{split}_labels must be an int64 ({images.shape[0]},) tensor, "
                    f"got {labels.dtype} {tuple(labels.shape)}"
                )
        if self.val_images.shape[1:] != self.train_images.shape[1:]:
            raise DataError(
                f"val_images must have the shape of train_images per image, {tuple(self.train_images.shape[1:])}, "
                f"got {tuple(self.val_images.shape[1:])}"
            )
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise DataError(
                f"mean and std must have one value per channel ({self.in_channels}), got {self.mean} and {self.std}"
            )

    def __repr__(self) -> str:
        # Shapes, not tensor contents: this shows up in logs and assertion messages.
        return (
            f"ImageData(name={self.name!r}, train={tuple(self.train_images.shape)}, "
            f"val={tuple(self.val_images.shape)}, num_classes={self.num_classes}, device={self.train_images.device})"
        )

    @property
    def image_size(self) -> int:
        """Side of the (square) stored images, in pixels."""
        return self.train_images.shape[-1]

    @property
    def in_channels(self) -> int:
        """Channels per image: 3 for RGB, 1 for grayscale."""
        return self.train_images.shape[1]

    def to(self, device: torch.device | str) -> ImageData:
        """The same dataset with its four tensors on ``device``: one copy each, done once per trial, not per batch."""
        return dataclasses.replace(
            self,
            train_images=self.train_images.to(device),
            train_labels=self.train_labels.to(device),
            val_images=self.val_images.to(device),
            val_labels=self.val_labels.to(device),
        )


class _Loaded(NamedTuple):
    """What a source loader returns: every training image of the source, before the hold-out split."""

    images: np.ndarray | torch.Tensor  # uint8 (N, C, H, W)
    labels: np.ndarray | torch.Tensor  # integers (N,)
    num_classes: int


def load_data(source: str, *, image_size: int | None = None, val_fraction: float = 0.1, seed: int = 0) -> ImageData:
    """Loads ``source`` (``"NAME[:ARG]"``), resizes it once to ``image_size`` and splits off a seeded hold-out set.

    Sources:

    - ``synthetic`` or ``synthetic:num_classes=10,num_images=10000,image_size=32``: procedural class-dependent
      images (:func:`synthetic_images`), generated from ``seed``; the default for tests and demos.
    - ``cifar10:DIR``: the ``data_batch_*`` files of the CIFAR-10 python version in ``DIR`` (``test_batch`` is
      never read).
    - ``cifar100:DIR``: the ``train`` file of the CIFAR-100 python version (fine labels; ``test`` is never read).
    - ``npz:FILE``: arrays ``images`` (uint8 NHWC, or NHW for grayscale) and ``labels`` (integers, (N,) or
      (N, 1)), or, when those are absent, Keras-style ``x_train`` and ``y_train`` (``x_test``/``y_test`` are never
      read). Other names are given after a ``?``: ``npz:FILE?images=x_train&labels=y_train`` (keys ``images``
      and ``labels``; a file name that holds a ``?`` is written with a trailing ``?``); ``flip=yes`` says that
      mirrored images keep their labels (without it an npz file is never flipped: ``ImageData.flips``). Labels must be exactly
      0..K-1 with K <= :data:`nas.sources.MAX_CLASSES`; K is the number of classes. Each array is checked from
      its ``.npy`` header first (dtype, shape, at most :data:`nas.sources.MAX_DATASET_BYTES`, agreeing with the
      archive's sizes), and never decompressed past the size that header declares.
    - ``imagefolder:DIR``: ``DIR/<class_name>/<image files>``, classes sorted by name; images are converted to
      RGB and resized to ``image_size`` (default 64) by scaling the shorter side and cropping the center, then
      cached in ``DIR/.nas-cache`` (rebuilt when the file list changes; skipped when ``DIR`` is read-only).

    ``image_size`` different from the source's native size resizes every image once here (bilinear with
    antialiasing), never per batch. The hold-out split is the last ``round(val_fraction * N)`` images (at least
    one) of a permutation seeded with ``seed``. A channel that is constant over the training split is refused:
    nothing can be learned from it, and normalization would divide by its zero standard deviation. So is a source
    whose labels hold fewer than two classes: with one, every candidate's accuracy would be 1.0.
    """
    check_real("val_fraction", val_fraction, 0, 0.5, low_open=True, error=DataError)
    images, labels, num_classes = _read_source(source, image_size, seed)
    train_index, val_index = _holdout_split(images.shape[0], val_fraction, seed)
    train_images = images.index_select(0, train_index)
    mean, std = _channel_statistics(train_images)
    _check_not_constant(source, mean, std)
    return ImageData(
        name=source,
        train_images=train_images,
        train_labels=labels.index_select(0, train_index),
        val_images=images.index_select(0, val_index),
        val_labels=labels.index_select(0, val_index),
        num_classes=num_classes,
        mean=mean,
        std=std,
        flips=source_flips(source),
    )


def load_data_with_evaluation(
    source: str, evaluation: str, *, image_size: int | None = None, seed: int = 0
) -> ImageData:
    """All of ``source`` to train on and all of ``evaluation`` to measure accuracy on, instead of a hold-out split
    of ``source``: a separate test set (``nas train --eval-data``, e.g. ``npz:FILE?images=x_test&labels=y_test``).
    Sources and ``image_size`` as in :func:`load_data`; the normalization is the training images' own.

    The two must describe one task: the same number of classes, channels and image size (both are resized to
    ``image_size`` when it is given); a mismatch is refused naming both values. A campaign never calls this: a test
    set must not steer a search.
    """
    train_images, train_labels, num_classes = _read_source(source, image_size, seed)
    val_images, val_labels, eval_classes = _read_source(evaluation, image_size, seed)
    for what, ours, theirs in (("classes", num_classes, eval_classes),
                               ("channels", train_images.shape[1], val_images.shape[1]),
                               ("image size", train_images.shape[-1], val_images.shape[-1])):
        if ours != theirs:
            hint = "; give --image-size to resize both" if what == "image size" else ""
            raise DataError(f"evaluation data {evaluation!r} has {what} {theirs}, the training data {source!r} "
                            f"{ours}: they must describe the same task{hint}")
    mean, std = _channel_statistics(train_images)
    _check_not_constant(source, mean, std)
    return ImageData(name=source, train_images=train_images, train_labels=train_labels, val_images=val_images,
                     val_labels=val_labels, num_classes=num_classes, mean=mean, std=std, flips=source_flips(source),
                     evaluation=evaluation)


def _read_source(source: str, image_size: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Every image of ``source`` (uint8 NCHW, resized once to ``image_size``), its labels (int64) and its number
    of classes, checked as :func:`load_data` says."""
    if not isinstance(source, str):
        raise DataError(f"source must be a string 'NAME[:ARG]', got {source!r}")
    check_int("image_size", image_size, 1, optional=True, error=DataError)
    check_int("seed", seed, 0, error=DataError)
    check_source(source, image_size=image_size, files=False)
    name, _, argument = source.partition(":")
    loaded = _LOADERS[name](argument, image_size, seed)
    images = torch.as_tensor(loaded.images)
    labels = torch.as_tensor(loaded.labels).to(torch.int64)
    if images.shape[0] == 0:
        raise DataError(f"data source {source!r} holds no images")
    if int(labels.min()) < 0 or int(labels.max()) >= loaded.num_classes:
        raise DataError(
            f"data source {source!r}: labels must be in [0, {loaded.num_classes}), "
            f"got values from {int(labels.min())} to {int(labels.max())}"
        )
    # The readers refuse one-class npz files and image folders by their files; this catches every other source
    # (a CIFAR batch holding a single label) on the labels themselves.
    check_classes(f"data source {source!r}", [f"label {label}" for label in torch.unique(labels).tolist()])
    if image_size is not None and image_size != images.shape[-1]:
        check_dataset_bytes(source, images.shape[0], images.shape[1], image_size)
        images = _resize_images(images, image_size)
    return images, labels, loaded.num_classes


def _derived_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from integer keys, so related streams (data, split, epochs) stay independent.

    The second key names the stream, one number each across the workshop: 0 synthetic images, 1 the hold-out
    split, 2 an epoch's order (and crops), 3 RandAugment per rank, 4 streamed per-sample crops, 5 streamed
    statistics (:mod:`nas.streaming`), 6 a rank's own draws (:mod:`nas.distributed`), 7 draws seeded afresh on a
    resume with another number of ranks (:mod:`nas.train`)."""
    high, low = np.random.SeedSequence(list(keys)).generate_state(2, dtype=np.uint32)
    return (int(high) << 31) ^ int(low)


def _holdout_split(count: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and hold-out indices: the last :func:`holdout_count` of a seeded permutation.

    At least one image is left to train on: :func:`load_data` refuses fewer than two classes, so ``count >= 2``,
    and ``val_fraction <= 0.5`` holds out at most ``max(1, round(count / 2)) < count`` images.
    """
    val_count = holdout_count(count, val_fraction)
    generator = torch.Generator().manual_seed(_derived_seed(seed, 1))
    order = torch.randperm(count, generator=generator)
    return order[: count - val_count], order[count - val_count :]


def _channel_statistics(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and standard deviation of uint8 images, in [0, 1] units, from value histograms.

    A channel with a single value has a standard deviation of exactly 0 (the float formula can leave ~1e-9).
    """
    values = torch.arange(256, dtype=torch.float64) / 255
    means, stds = [], []
    for channel in range(images.shape[1]):
        counts = torch.bincount(images[:, channel].reshape(-1), minlength=256).to(torch.float64)
        total = counts.sum()
        mean = (counts * values).sum() / total
        variance = ((counts * values.square()).sum() / total - mean.square()).clamp_min(0)
        means.append(float(mean))
        stds.append(0.0 if int(counts.count_nonzero()) == 1 else float(variance.sqrt()))
    return tuple(means), tuple(stds)


def _check_not_constant(source: str, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
    """Refuses training images with a constant channel, naming it, instead of a later ``std must be positive``."""
    for channel, (channel_mean, channel_std) in enumerate(zip(mean, std)):
        if channel_std == 0:
            raise DataError(
                f"data source {source!r}: all images are constant in channel {channel} of {len(std)} (every "
                f"training pixel is {round(channel_mean * 255)}); nothing can be learned from it: check that the "
                "source holds real images"
            )


def _resize_images(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """uint8 (N, C, H, W) -> uint8 (N, C, image_size, image_size), bilinear with antialiasing, in chunks."""
    resized = torch.empty((images.shape[0], images.shape[1], image_size, image_size), dtype=torch.uint8)
    for start in range(0, images.shape[0], _RESIZE_CHUNK):
        chunk = images[start : start + _RESIZE_CHUNK].to(torch.float32)
        chunk = F.interpolate(
            chunk, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False
        )
        resized[start : start + _RESIZE_CHUNK] = chunk.round_().clamp_(0, 255).to(torch.uint8)
    return resized


# ----------------------------------------------------------------------------------------------- synthetic


def _load_synthetic(argument: str, image_size: int | None, seed: int) -> _Loaded:
    options = synthetic_options(argument)
    # The native size is the option; without one, images are drawn directly at the requested size.
    native_size = options.get("image_size", image_size or 32)
    images, labels = synthetic_images(
        num_classes=options.get("num_classes", 10),
        num_images=options.get("num_images", 10000),
        image_size=native_size,
        seed=seed,
    )
    return _Loaded(images, labels, options.get("num_classes", 10))


def synthetic_images(
    *, num_classes: int = 10, num_images: int = 10000, image_size: int = 32, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Procedural RGB images whose class is learnable but not trivially so: uint8 (N, 3, S, S) and int64 labels.

    Class ``c`` is drawn from a bank of ``num_classes`` coloured sinusoidal gratings (each with its own
    orientation, frequency and colour): a strong grating ``c`` plus a weaker grating ``c + 1``, so
    neighbouring classes share a component, and a Gaussian blob of a class colour at a class position.
    Nuisances that keep a small network from reaching 100% after one epoch: random grating phase, random
    translation of the blob, a distractor grating and blob of another class, per-image contrast, brightness and
    per-channel colour gains, and pixel noise. Labels are balanced (``i % num_classes``, shuffled).

    Everything is drawn from one seeded ``torch.Generator`` and rendered in vectorized chunks: the same seed
    gives bit-identical images on the same machine, a different seed gives different prototypes and images.
    """
    check_int("num_images", num_images, 1, error=DataError)
    check_int("image_size", image_size, 1, error=DataError)
    check_int("num_classes", num_classes, 2, error=DataError)
    check_int("seed", seed, 0, error=DataError)
    generator = torch.Generator().manual_seed(_derived_seed(seed, 0))

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(shape, generator=generator)

    # Prototypes. Orientations are spread over [0, pi) in a seeded order, so classes with near orientations
    # differ by frequency or colour; colours are unit vectors in RGB space around the mean grey.
    orientations = (torch.randperm(num_classes, generator=generator) + uniform(-0.3, 0.3, num_classes)) * (
        math.pi / num_classes
    )
    frequencies = uniform(1.5, 4.5, num_classes)  # cycles per image side
    grating_colours = F.normalize(torch.randn((num_classes, 3), generator=generator), dim=1)
    blob_colours = F.normalize(torch.randn((num_classes, 3), generator=generator), dim=1)
    blob_centres = uniform(0.25, 0.75, num_classes, 2)

    labels = (torch.arange(num_images) % num_classes)[torch.randperm(num_images, generator=generator)]
    # Per-image nuisances.
    distractors = (labels + torch.randint(1, num_classes, (num_images,), generator=generator)) % num_classes
    phases = uniform(0, 2 * math.pi, num_images, 3)
    amplitudes = torch.stack(
        [uniform(0.5, 1.0, num_images), uniform(0.2, 0.7, num_images), uniform(0.0, 0.7, num_images)], dim=1
    )
    blob_shifts = uniform(-0.15, 0.15, num_images, 2)
    blob_amplitudes = torch.stack([uniform(0.4, 1.0, num_images), uniform(0.0, 0.6, num_images)], dim=1)
    distractor_blob_classes = (labels + torch.randint(1, num_classes, (num_images,), generator=generator)) % num_classes
    contrasts = uniform(0.5, 1.0, num_images)
    brightness = uniform(-0.12, 0.12, num_images)
    channel_gains = uniform(0.75, 1.25, num_images, 3)

    # Difficulty, tuned so that the "tiny" preset reaches ~35% after one epoch and ~75% after three (10 classes).
    blob_radius, blob_weight = 0.12, 1.2  # in image sides; blob strength relative to a unit grating
    signal_scale, noise_std = 0.22, 0.11  # in [0, 1] pixel units
    coordinates = (torch.arange(image_size, dtype=torch.float32) + 0.5) / image_size  # pixel centres in [0, 1)
    rows, columns = coordinates.view(1, -1, 1), coordinates.view(1, 1, -1)
    images = torch.empty((num_images, 3, image_size, image_size), dtype=torch.uint8)
    for start in range(0, num_images, _SYNTHETIC_CHUNK):
        chunk = slice(start, start + _SYNTHETIC_CHUNK)
        chunk_labels = labels[chunk]
        # The three gratings of each image: its class, the next class (shared structure), a distractor.
        components = torch.stack([chunk_labels, (chunk_labels + 1) % num_classes, distractors[chunk]], dim=1)
        angle = orientations[components].unsqueeze(-1).unsqueeze(-1)  # (n, 3, 1, 1)
        wave = 2 * math.pi * frequencies[components].unsqueeze(-1).unsqueeze(-1)
        gratings = torch.cos(
            wave * (columns.unsqueeze(1) * torch.cos(angle) + rows.unsqueeze(1) * torch.sin(angle))
            + phases[chunk].unsqueeze(-1).unsqueeze(-1)
        )  # (n, 3 gratings, S, S)
        gratings = gratings * amplitudes[chunk].unsqueeze(-1).unsqueeze(-1)
        signal = torch.einsum("ngc,ngyx->ncyx", grating_colours[components], gratings)  # (n, RGB, S, S)

        blob_classes = torch.stack([chunk_labels, distractor_blob_classes[chunk]], dim=1)  # (n, 2)
        centres = blob_centres[blob_classes] + blob_shifts[chunk].unsqueeze(1)  # (n, 2 blobs, xy)
        squared_distance = (columns - centres[..., 0, None, None]) ** 2 + (rows - centres[..., 1, None, None]) ** 2
        blobs = torch.exp(squared_distance / (-2 * blob_radius**2)) * blob_amplitudes[chunk].unsqueeze(-1).unsqueeze(-1)
        signal += blob_weight * torch.einsum("nbc,nbyx->ncyx", blob_colours[blob_classes], blobs)

        signal *= (signal_scale * contrasts[chunk]).view(-1, 1, 1, 1)
        signal += 0.5 + brightness[chunk].view(-1, 1, 1, 1)  # around mid grey
        signal *= channel_gains[chunk].view(-1, 3, 1, 1)
        signal += noise_std * torch.randn(signal.shape, generator=generator)
        images[chunk] = (signal * 255).round_().clamp_(0, 255).to(torch.uint8)
    return images, labels


# ----------------------------------------------------------------------------------------------- CIFAR, npz


def _load_cifar10(argument: str, image_size: int | None, seed: int) -> _Loaded:
    return _Loaded(*read_cifar10(argument), 10)


def _load_cifar100(argument: str, image_size: int | None, seed: int) -> _Loaded:
    return _Loaded(*read_cifar100(argument), 100)


def _load_npz(argument: str, image_size: int | None, seed: int) -> _Loaded:
    return _Loaded(*read_npz(argument))


# ----------------------------------------------------------------------------------------------- imagefolder


def _load_imagefolder(argument: str, image_size: int | None, seed: int) -> _Loaded:
    directory = existing_directory("imagefolder", argument)
    size = image_size or DEFAULT_IMAGEFOLDER_SIZE
    classes, files = list_image_folder(directory)
    check_dataset_bytes(f"imagefolder:{argument}", len(files), 3, size)
    fingerprint = hashlib.sha256(
        json.dumps([[path.relative_to(directory).as_posix(), *_file_signature(path)] for path, _ in files]).encode()
    ).hexdigest()
    cache = _FolderCache(directory / CACHE_DIRNAME, fingerprint, size)
    cached = cache.read(len(files), classes)
    if cached is not None:
        return _Loaded(*cached, len(classes))
    with warnings.catch_warnings():
        # Pillow only warns for an image between its pixel limit and twice that (it raises beyond): refuse those
        # too. Warning filters are process-wide, so the decoding threads below see this one.
        warnings.simplefilter("error", _pillow().DecompressionBombWarning)
        with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as executor:  # Pillow releases the GIL
            images = np.stack(list(executor.map(lambda item: _decode_image(item[0], size), files)))
    labels = np.asarray([label for _, label in files], dtype=np.int64)
    cache.write(images, labels, classes)
    return _Loaded(images, labels, len(classes))


def _file_signature(path: Path) -> tuple[int, int]:
    status = path.stat()
    return status.st_size, status.st_mtime_ns


def _pillow() -> Any:
    """Pillow's Image module, imported only by the source that needs it."""
    try:
        from PIL import Image
    except ImportError as error:
        raise ImportError("the imagefolder source needs Pillow: pip install pillow") from error
    return Image


def _decode_image(path: Path, size: int) -> np.ndarray:
    """One image file -> uint8 (3, size, size): RGB, shorter side scaled to ``size``, center cropped.

    A file that claims more pixels than Pillow's decompression-bomb limit, or does not decode, is refused by name.
    """
    Image = _pillow()
    try:
        with Image.open(path) as image:
            image.draft("RGB", (size, size))  # JPEG: decode at a reduced scale that is still >= size
            image = image.convert("RGB")
            width, height = image.size
            side = min(width, height)
            left, top = (width - side) / 2, (height - side) / 2
            # Resizing the centered square box equals scaling the shorter side to `size`, then center cropping.
            image = image.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side))
            return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise DataError(f"imagefolder: image {path} is too large to decode safely ({error}); remove it") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as error:
        raise DataError(f"imagefolder: cannot read image {path}: {error}; remove or replace it") from error


class _FolderCache:
    """The decoded images of an image folder at one size, as .npy files in ``DIR/.nas-cache``.

    ``classes.json`` holds the fingerprint of the file list (relative paths, sizes, modification times), the
    class names and the image sizes cached for that fingerprint; it is written last, so a cache interrupted
    mid-write is never trusted. A folder that cannot be written is simply not cached.
    """

    def __init__(self, directory: Path, fingerprint: str, image_size: int):
        self.directory = directory
        self.fingerprint = fingerprint
        self.image_size = image_size
        self.images_path = directory / f"images_{image_size}.npy"
        self.labels_path = directory / f"labels_{image_size}.npy"
        self.index_path = directory / "classes.json"

    def _cached_sizes(self, classes: list[str]) -> list[int] | None:
        """The image sizes cached for this file list and these classes; None when the index is absent or stale."""
        try:
            index = json.loads(self.index_path.read_text())
        except (OSError, ValueError):
            return None
        if (
            not isinstance(index, dict)
            or index.get("fingerprint") != self.fingerprint
            or index.get("classes") != classes
            or not isinstance(index.get("image_sizes"), list)
        ):
            return None
        return [size for size in index["image_sizes"] if isinstance(size, int)]

    def read(self, count: int, classes: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
        """The cached images and labels, or None when absent, stale or damaged."""
        sizes = self._cached_sizes(classes)
        if sizes is None or self.image_size not in sizes:
            return None
        try:
            images = np.load(self.images_path, allow_pickle=False)
            labels = np.load(self.labels_path, allow_pickle=False)
        except (OSError, ValueError):
            return None
        if (
            images.dtype != np.uint8
            or images.shape != (count, 3, self.image_size, self.image_size)
            or labels.dtype != np.int64
            or labels.shape != (count,)
        ):
            return None
        return images, labels

    def write(self, images: np.ndarray, labels: np.ndarray, classes: list[str]) -> None:
        """Stores the arrays (atomically, file by file), then the index; gives up silently if not writable."""
        sizes = self._cached_sizes(classes)
        try:
            self.directory.mkdir(exist_ok=True)
            if sizes is None:  # arrays already there were built from another file list
                for path in [*self.directory.glob("images_*.npy"), *self.directory.glob("labels_*.npy")]:
                    path.unlink()
            # Through the project's one safe writer: a unique O_EXCL|O_NOFOLLOW temporary file, fsync, rename.
            write_file(self.images_path, lambda file: np.save(file, images, allow_pickle=False))
            write_file(self.labels_path, lambda file: np.save(file, labels, allow_pickle=False))
            index = {
                "fingerprint": self.fingerprint,
                "classes": classes,
                "image_sizes": sorted({*(sizes or []), self.image_size}),
            }
            write_file(self.index_path, json.dumps(index, indent=1))
        except OSError:
            return  # a read-only folder is used without a cache


# The loader of each source that nas.sources checks (and names, in this order): (argument, image_size, seed).
_LOADERS: dict[str, Callable[[str, int | None, int], _Loaded]] = {
    "synthetic": _load_synthetic,
    "cifar10": _load_cifar10,
    "cifar100": _load_cifar100,
    "npz": _load_npz,
    "imagefolder": _load_imagefolder,
}


# ----------------------------------------------------------------------------------------------- batches


class BatchStream:
    """What :class:`DeviceBatches` and :class:`nas.streaming.StreamingBatches` share: the batch settings, the
    epoch counter that is all a checkpoint keeps of the stream, batches per epoch, the ranks' equal shares of a
    global batch, and the normalization ``(x / 255 - mean) / std == x * scale + shift`` on ``device``.

    ``count`` images of ``channels`` channels. ``batch_size``, ``image_size`` and the RandAugment settings may
    change between epochs (progressive learning); the shares are checked again each epoch.
    """

    def __init__(self, count: int, channels: int, *, batch_size: int, mean: Sequence[float], std: Sequence[float],
                 augment: str, shuffle: bool, drop_last: bool, channels_last: bool, seed: int, crop_padding: int,
                 randaugment_magnitude: float, randaugment_ops: int, rank: int, world_size: int,
                 device: torch.device) -> None:
        check_int("batch_size", batch_size, 1)
        check_choice("augment", augment, AUGMENTATIONS)
        check_int("crop_padding", crop_padding, 0)
        check_int("seed", seed, 0)
        check_real("randaugment_magnitude", randaugment_magnitude, 0, int(RANDAUGMENT_MAX_MAGNITUDE))
        check_int("world_size", world_size, 1)
        check_int("rank", rank, 0, world_size, high_open=True)
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean and std must have {channels} values (one per channel), got {mean} and {std}")
        if not all(value > 0 for value in std):
            raise ValueError(f"std must be positive, got {std}")
        self._count = count
        self.batch_size = batch_size
        self.augment = augment
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.channels_last = channels_last
        self.seed = seed
        self.crop_padding = crop_padding
        # Progressive learning changes these (and image_size) between epochs.
        self.randaugment_magnitude = randaugment_magnitude
        self.randaugment_ops = randaugment_ops
        self.rank, self.world_size = rank, world_size
        self._epoch = 0
        self._check_shares()
        std_tensor = torch.tensor(std, dtype=torch.float32, device=device).view(1, channels, 1, 1)
        mean_tensor = torch.tensor(mean, dtype=torch.float32, device=device).view(1, channels, 1, 1)
        # (x / 255 - mean) / std == x * scale + shift: two in-place passes over the float batch.
        self._scale = 1 / (255 * std_tensor)
        self._shift = -mean_tensor / std_tensor

    def state_dict(self) -> dict[str, int]:
        """Where the batch stream is: epochs are seeded from (seed, epoch), so the epoch count is all a resumed
        run needs to draw the same batches."""
        return {"epoch": self._epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._epoch = int(state["epoch"])

    def __len__(self) -> int:
        """Batches per epoch."""
        count = self._count
        return count // self.batch_size if self.drop_last else -(-count // self.batch_size)

    def _check_shares(self) -> None:
        """Refuses a global batch that the ranks cannot share equally (checked each epoch: it may change)."""
        if self.batch_size % self.world_size:
            raise ValueError(
                f"batch_size {self.batch_size} (the global batch) must be divisible by world_size "
                f"{self.world_size}, so that every rank takes an equal share"
            )
        if self.world_size > 1 and not self.drop_last:
            raise ValueError(
                "with several ranks only whole global batches are shared (drop_last=True); shard the evaluation "
                "images by rank instead"
            )


class DeviceBatches(BatchStream):
    """Mini-batches cut from uint8 tensors that already live on the training device, augmented there per batch.

    Each ``__iter__`` is a new epoch: a permutation (``shuffle``) and the augmentation parameters of every
    sample are drawn at once from a ``torch.Generator`` on the images' device, seeded from ``seed`` and the
    epoch number, so two instances with the same seed yield identical batches and epochs differ. A batch costs a
    few kernels and no host synchronization:

    - ``crop_flip`` (the CIFAR standard): translation by up to ``crop_padding`` pixels with zero padding (one
      gather from the windows of the padded batch) and a random horizontal flip (one select), on uint8.
    - ``resized_crop_flip``: random-resized crop (area scale in (0.35, 1), log-uniform aspect ratio in
      (3/4, 4/3)) and flip, as one ``affine_grid`` + ``grid_sample`` over the batch.
    - ``none``: normalization only, for evaluation (use ``shuffle=False, drop_last=False``).

    With ``randaugment_magnitude > 0``, RandAugment (``randaugment_ops`` ops per image, :mod:`nas.augment`) follows
    the crop. Batches are float32 ``(x / 255 - mean) / std``, in channels_last memory format when
    ``channels_last``, at ``image_size`` (resized on the device when it differs from the stored size), with their
    int64 labels. ``image_size`` and the RandAugment settings may change between epochs (progressive learning).

    Data-parallel (``world_size`` ranks, :mod:`nas.distributed`): ``batch_size`` is the global batch and each rank
    yields rows ``[rank * b, (rank + 1) * b)`` of every global batch, ``b = batch_size / world_size``. The order and
    the crop and flip parameters are drawn for the whole epoch and belong to the sample, so the ranks' batches put
    together are the one-process batch, whatever the number of ranks. RandAugment's draws are per batch on the
    device; with several ranks each rank draws its own from a generator seeded per (seed, epoch, rank).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        augment: str = "crop_flip",
        image_size: int | None = None,
        shuffle: bool = True,
        drop_last: bool = True,
        channels_last: bool = True,
        seed: int = 0,
        crop_padding: int = 4,
        randaugment_magnitude: float = 0.0,
        randaugment_ops: int = 2,
        rank: int = 0,
        world_size: int = 1,
    ):
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[2] != images.shape[3]:
            raise ValueError(f"images must be a uint8 (N, C, S, S) tensor, got {images.dtype} {tuple(images.shape)}")
        if images.shape[0] == 0:
            raise ValueError("images must hold at least one image, got 0")
        if labels.dtype != torch.int64 or labels.shape != images.shape[:1]:
            raise ValueError(
                f"labels must be an int64 ({images.shape[0]},) tensor, got {labels.dtype} {tuple(labels.shape)}"
            )
        if labels.device != images.device:
            raise ValueError(f"labels must be on the images' device {images.device}, got {labels.device}")
        check_int("image_size", image_size, 1, optional=True)
        device = images.device
        super().__init__(images.shape[0], images.shape[1], batch_size=batch_size, mean=mean, std=std,
                         augment=augment, shuffle=shuffle, drop_last=drop_last, channels_last=channels_last,
                         seed=seed, crop_padding=crop_padding, randaugment_magnitude=randaugment_magnitude,
                         randaugment_ops=randaugment_ops, rank=rank, world_size=world_size, device=device)
        self.images = images.contiguous()
        self.labels = labels
        self.stored_size = images.shape[-1]
        self.image_size = image_size or self.stored_size
        self._generator = torch.Generator(device=device)
        self._batch_positions = torch.arange(batch_size, device=device)
        # Crop offsets and flip are drawn as uniform numbers scaled to these counts of choices.
        self._crop_choices = torch.tensor([2 * crop_padding + 1, 2 * crop_padding + 1, 2], device=device)
        self._crop_choices_no_flip = torch.tensor([2 * crop_padding + 1, 2 * crop_padding + 1, 1], device=device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._check_shares()
        epoch = self._epoch
        self._generator.manual_seed(_derived_seed(self.seed, 2, epoch))
        self._epoch += 1
        count, device = self.images.shape[0], self.images.device
        order = torch.randperm(count, generator=self._generator, device=device) if self.shuffle else None
        parameters = self._draw_parameters(count)
        if self.world_size > 1:  # RandAugment's per-batch draws: this rank's own
            self._generator.manual_seed(_derived_seed(self.seed, 3, epoch, self.rank))
        share = self.batch_size // self.world_size
        for global_start in range(0, len(self) * self.batch_size, self.batch_size):
            start = min(global_start + self.rank * share, count)
            stop = min(start + share, global_start + self.batch_size, count)
            if order is None:
                images, labels = self.images[start:stop], self.labels[start:stop]
            else:
                index = order[start:stop]
                # index_select, not images[index]: on CPU it is a row copy, ~50x faster for uint8.
                images, labels = self.images.index_select(0, index), self.labels.index_select(0, index)
            yield self._transform(images, parameters[start:stop] if parameters is not None else None), labels

    def _draw_parameters(self, count: int) -> torch.Tensor | None:
        """Per-sample augmentation parameters of one epoch, drawn with one generator call."""
        device = self.images.device
        if self.augment in ("crop_flip", "crop"):
            # Columns: vertical offset, horizontal offset (each in [0, 2 * padding]), flip (0 or 1; 0 for crop).
            choices = self._crop_choices if self.augment == "crop_flip" else self._crop_choices_no_flip
            return (torch.rand((count, 3), generator=self._generator, device=device) * choices).long()
        if self.augment in ("resized_crop_flip", "resized_crop"):
            # Columns: area scale, log aspect ratio, horizontal centre, vertical centre, flip, each uniform in [0, 1).
            return torch.rand((count, 5), generator=self._generator, device=device)
        return None

    def _transform(self, images: torch.Tensor, parameters: torch.Tensor | None) -> torch.Tensor:
        """uint8 (B, C, S, S) -> augmented, normalized float32 (B, C, image_size, image_size).

        Normalization runs in NCHW and the layout changes last: on CPU a channels_last multiply-add broadcasts
        over an innermost dimension of C = 3 and is several times slower than this order.
        """
        if self.augment in ("crop_flip", "crop"):
            images = self._crop_flip(images, parameters)
        images = images.to(torch.float32)
        if self.augment in ("resized_crop_flip", "resized_crop"):
            images = self._resized_crop_flip(images, parameters)
        if self.randaugment_magnitude > 0:
            images = rand_augment(
                images.div_(255.0), num_ops=self.randaugment_ops, magnitude=self.randaugment_magnitude,
                generator=self._generator,
            ).mul_(255.0)
        images = images.mul_(self._scale).add_(self._shift)
        if images.shape[-1] != self.image_size:
            images = F.interpolate(
                images, size=(self.image_size, self.image_size), mode="bilinear", antialias=True, align_corners=False
            )
        return images.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)

    def _crop_flip(self, images: torch.Tensor, parameters: torch.Tensor) -> torch.Tensor:
        """Translation crop with zero padding, then horizontal flip: uint8 in, uint8 out.

        The crop is one gather from a view of every window of the padded batch, indexed by B sample/offset
        triples, so no per-element index tensor is built (it would be 8x the batch at int64).
        """
        padding, side = self.crop_padding, images.shape[-1]
        padded = F.pad(images, (padding, padding, padding, padding))
        windows = padded.unfold(2, side, 1).unfold(3, side, 1)  # (B, C, 2p + 1, 2p + 1, S, S), a view
        crops = windows[self._batch_positions[: images.shape[0]], :, parameters[:, 0], parameters[:, 1]]  # (B, C, S, S)
        return torch.where(parameters[:, 2].view(-1, 1, 1, 1).bool(), crops.flip(-1), crops)

    def _resized_crop_flip(self, images: torch.Tensor, parameters: torch.Tensor) -> torch.Tensor:
        """Random-resized crop and flip of float images by one affine resampling, straight to the output size."""
        scale = 0.35 + 0.65 * parameters[:, 0]
        log_ratio = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * parameters[:, 1]
        # Crop width and height as fractions of the side; clamped so the crop stays inside the image.
        width = (scale * log_ratio.exp()).sqrt().clamp(max=1)
        height = (scale / log_ratio.exp()).sqrt().clamp(max=1)
        centre_x = (1 - width) * (2 * parameters[:, 2] - 1)  # in grid_sample's [-1, 1] coordinates
        centre_y = (1 - height) * (2 * parameters[:, 3] - 1)
        flipped = parameters[:, 4] < 0.5 if self.augment == "resized_crop_flip" else torch.zeros_like(scale, dtype=torch.bool)
        sign = 1 - 2 * flipped.to(images.dtype)
        zeros = torch.zeros_like(width)
        theta = torch.stack(
            [torch.stack([width * sign, zeros, centre_x], dim=1), torch.stack([zeros, height, centre_y], dim=1)], dim=1
        )  # (B, 2, 3): output coordinates -> input coordinates
        size = (images.shape[0], images.shape[1], self.image_size, self.image_size)
        grid = F.affine_grid(theta, size, align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
