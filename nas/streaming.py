"""Image folders larger than memory: batches decoded from the files each epoch, at that epoch's image size.

The cached ``imagefolder:DIR`` source (:func:`nas.data.load_data`) decodes every image once, at one size, into one
resident uint8 tensor. That cannot hold ImageNet-size folders (59 GiB at 128 px), and progressive learning's later
stages want larger images than the cache holds. Here only the file list is resident (DESIGN.md: "data that does
not fit in memory is streamed by DataLoader workers at the current progressive size"): :class:`StreamingBatches`
decodes each batch in DataLoader worker processes at the current ``image_size`` and normalizes it on the
training device, with the interface of :class:`nas.data.DeviceBatches`, so the training loop takes either.

Streamed and cached runs of one folder agree where they can: the same classes, file order and seeded hold-out
split (:func:`open_streaming_folder`), the same epoch order for the same seed, and at evaluation (augment
``none``) the very images the cache holds at that size. :func:`cache_refusal` says when the cached path cannot
take a folder, so a caller can choose streaming by itself.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from nas.augment import rand_augment
from nas.data import (
    BatchStream,
    _channel_statistics,
    _check_not_constant,
    _decode_image,
    _derived_seed,
    _holdout_split,
    _pillow,
)
from nas.sources import (
    DEFAULT_IMAGEFOLDER_SIZE,
    DataError,
    check_dataset_bytes,
    existing_directory,
    list_image_folder,
)
from search_spaces.checks import check_int, check_real
from search_spaces.spec import MAX_IMAGE_SIZE

STATISTICS_SAMPLE = 2048  # training images decoded to estimate the normalization
STATISTICS_SIZE = 64  # their side in pixels: channel statistics barely depend on it, decoding time does

# Second keys of _derived_seed(seed, KEY, ...), one per independent stream: nas.data uses 0 (synthetic images),
# 1 (hold-out split) and 2 (epoch order, shared with DeviceBatches); this module 3 (RandAugment) and these.
_RANDAUGMENT_STREAM = 3
_SAMPLE_AUGMENT_STREAM = 4
_STATISTICS_STREAM = 5


@dataclass(frozen=True, kw_only=True, eq=False, repr=False)
class StreamingFolder:
    """An image folder as file lists and labels: what :class:`StreamingBatches` decodes from, nothing decoded.

    The counterpart of :class:`nas.data.ImageData` for data that is not resident: ``train_files`` and
    ``val_files`` are the seeded split of :func:`nas.data.load_data` (the same files held out for the same seed
    and ``val_fraction``), labels are int64 CPU tensors, ``image_size`` is the nominal size (the one the cached
    path would store). ``mean`` and ``std`` are per-channel, in [0, 1] units, *estimated* from a seeded sample of
    at most :data:`STATISTICS_SAMPLE` training images decoded at :data:`STATISTICS_SIZE` px: the exact values
    would cost a pass over every file, an epoch of decoding, before training starts. Below that many training
    images the sample is all of them and the values are those of the cached path at that size.
    """

    name: str
    train_files: tuple[Path, ...]
    train_labels: torch.Tensor
    val_files: tuple[Path, ...]
    val_labels: torch.Tensor
    num_classes: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flips: bool = True
    class_names: tuple[str, ...]
    workers: int = 0
    device: torch.device = torch.device("cpu")
    evaluation: None = None  # as ImageData's: a streamed folder is evaluated on its own hold-out

    def to(self, device: torch.device | str) -> StreamingFolder:
        """The same folder with its batches delivered on ``device`` (as :meth:`nas.data.ImageData.to`; the files
        stay where they are)."""
        return dataclasses.replace(self, device=torch.device(device))

    def batches(self, split: str, rows: slice = slice(None), **options: Any) -> StreamingBatches:
        """:class:`StreamingBatches` of the ``train`` or ``val`` files (``rows`` of them), decoded by this
        folder's ``workers`` onto its ``device``, normalized with its statistics; ``options`` as the class takes."""
        files, labels = (self.train_files, self.train_labels) if split == "train" else (self.val_files,
                                                                                         self.val_labels)
        return StreamingBatches(files[rows], labels[rows], mean=self.mean, std=self.std, workers=self.workers,
                                device=self.device, **options)

    @property
    def in_channels(self) -> int:
        """Channels per image: always 3, since every image is converted to RGB as the cached path does."""
        return 3

    @property
    def evaluated_on(self) -> str:
        """What the ``val_*`` files are, in words (as :attr:`nas.data.ImageData.evaluated_on`)."""
        return f"the hold-out of {self.name}"

    def __repr__(self) -> str:
        # Counts, not file lists: this shows up in logs, and a folder may hold millions of files.
        return (
            f"StreamingFolder(name={self.name!r}, train={len(self.train_files)} files, val={len(self.val_files)} "
            f"files, num_classes={self.num_classes}, image_size={self.image_size})"
        )


def open_streaming_folder(
    directory: str | Path, *, image_size: int | None = None, val_fraction: float = 0.1, seed: int = 0,
    workers: int = 0,
) -> StreamingFolder:
    """Lists ``DIR/<class_name>/<image files>`` and splits it as ``load_data("imagefolder:DIR")`` would.

    Classes, file order and the hold-out split are the cached path's own (:func:`nas.sources.list_image_folder`,
    :func:`nas.data._holdout_split`), so a streamed and a cached run with the same ``seed`` and ``val_fraction``
    hold out the same files. ``image_size`` is the nominal size (default
    :data:`nas.sources.DEFAULT_IMAGEFOLDER_SIZE`); batches may use any other. Only the sample of the normalization
    estimate is decoded (:class:`StreamingFolder`), so an unreadable file among it is refused here with the
    cached path's message, and a constant channel as :func:`nas.data.load_data` refuses it. ``workers``: the
    decoding processes of its batches (0 decodes in the training process).
    """
    check_real("val_fraction", val_fraction, 0, 0.5, low_open=True, error=DataError)
    check_int("image_size", image_size, 1, MAX_IMAGE_SIZE, optional=True, error=DataError)
    check_int("seed", seed, 0, error=DataError)
    source = f"imagefolder:{directory}"
    classes, files = list_image_folder(existing_directory("imagefolder", str(directory)))
    paths = [path for path, _ in files]
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    train_index, val_index = _holdout_split(len(files), val_fraction, seed)
    train_files = tuple(paths[index] for index in train_index.tolist())
    mean, std = _estimate_statistics(train_files, seed)
    _check_not_constant(source, mean, std)
    return StreamingFolder(
        name=source,
        train_files=train_files,
        train_labels=labels.index_select(0, train_index),
        val_files=tuple(paths[index] for index in val_index.tolist()),
        val_labels=labels.index_select(0, val_index),
        num_classes=len(classes),
        image_size=image_size or DEFAULT_IMAGEFOLDER_SIZE,
        mean=mean,
        std=std,
        class_names=tuple(classes),
        workers=workers,
    )


def cache_refusal(
    directory: str | Path, image_size: int | None = None, *, memory_bytes: int | None = None, processes: int = 1
) -> str | None:
    """Why the cached ``imagefolder:DIR`` source cannot take this folder at ``image_size``, or None when it can.

    A reason is :func:`nas.sources.check_dataset_bytes`'s refusal, or twice the decoded images exceeding
    ``memory_bytes`` (default: this machine's available memory): the cached path's peak, while it stacks the
    decoded images into one array and while it splits that array, is about twice their size. A caller that trains
    on an accelerator may pass the smaller of host and device memory, since the cached images then live on the
    device too. ``processes`` load it at once on this machine (the ranks of a node under torchrun: each holds its
    own copy), so each has its share of the memory. A folder that neither path can read (no class folders, one
    class) raises the listing's DataError.
    """
    check_int("image_size", image_size, 1, MAX_IMAGE_SIZE, optional=True, error=DataError)
    check_int("memory_bytes", memory_bytes, 1, optional=True, error=DataError)
    check_int("processes", processes, 1, error=DataError)
    source = f"imagefolder:{directory}"
    size = image_size or DEFAULT_IMAGEFOLDER_SIZE
    _, files = list_image_folder(existing_directory("imagefolder", str(directory)))
    try:
        check_dataset_bytes(source, len(files), 3, size)
    except DataError as error:
        return str(error)
    needed = 2 * len(files) * 3 * size * size
    memory = (memory_bytes if memory_bytes is not None else _available_memory()) // processes
    if needed > memory:
        each = "" if processes == 1 else f" to each of {processes} processes loading it"
        return (
            f"data source {source!r}: {len(files):,} images of 3x{size}x{size} pixels need about "
            f"{needed / 2**30:,.1f} GiB while cached, more than the {memory / 2**30:,.1f} GiB of memory available{each}"
        )
    return None


def _available_memory() -> int:
    """Bytes of memory available to a new allocation: Linux's MemAvailable, else the physical memory."""
    try:
        with open("/proc/meminfo") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _estimate_statistics(files: Sequence[Path], seed: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of a seeded sample of ``files`` decoded at :data:`STATISTICS_SIZE` px: memory
    bounded by the sample (~25 MiB), not the folder."""
    generator = torch.Generator().manual_seed(_derived_seed(seed, _STATISTICS_STREAM))
    sample = torch.randperm(len(files), generator=generator)[:STATISTICS_SAMPLE].tolist()
    with warnings.catch_warnings():
        # As the cached path: a decompression-bomb warning is an error (filters are process-wide: threads see it).
        warnings.simplefilter("error", _pillow().DecompressionBombWarning)
        with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as executor:  # Pillow releases the GIL
            images = np.stack(list(executor.map(lambda index: _decode_image(files[index], STATISTICS_SIZE), sample)))
    return _channel_statistics(torch.from_numpy(images))


# ----------------------------------------------------------------------------------------------- batches


class StreamingBatches(BatchStream):
    """Mini-batches decoded from image files by DataLoader workers, normalized on the training device.

    The interface of :class:`nas.data.DeviceBatches` (each ``__iter__`` is an epoch; ``image_size``,
    ``batch_size`` and the RandAugment settings may change between epochs; ``state_dict`` is the epoch count),
    for ``files`` that do not fit in memory. ``batch_size`` is the *global* batch: with ``world_size`` ranks, rank
    ``r`` yields rows ``[r * B / W, (r + 1) * B / W)`` of each global batch and decodes only those files; only whole
    global batches are shared (``drop_last``), as in DeviceBatches: evaluation shards its files by rank. The
    epoch order is DeviceBatches' on CPU for the same seed and every sample's augmentation is seeded by (seed,
    epoch, sample), so without RandAugment the W ranks' batches put together are the one-rank batch, whatever W
    and ``workers``.

    Augmentations (per sample, in the workers, on the decoded image):

    - ``resized_crop_flip`` / ``resized_crop``: a random-resized crop (area scale in (0.35, 1) of the original
      image, log-uniform aspect ratio in (3/4, 4/3)) of the original file, resized straight to ``image_size``, and
      a flip: DeviceBatches' draws, but from the full-resolution image rather than a stored small one.
    - ``crop_flip`` / ``crop``: the cached path's decode at ``image_size``, then a translation by up to
      ``crop_padding`` pixels with zero padding and a flip.
    - ``none`` (evaluation: ``shuffle=False, drop_last=False``): the cached path's decode
      (:func:`nas.data._decode_image`), so a streamed image equals the cached one at the same size, bit for bit.

    RandAugment (``randaugment_magnitude > 0``) runs on the device over each batch, as in DeviceBatches, seeded by
    (seed, epoch, rank, batch index): per rank and batch, not per sample, so it is the one draw that depends on
    the number of ranks. Batches are float32 ``(x / 255 - mean) / std`` on ``device`` (channels_last when
    asked) with int64 labels. ``workers`` is the number of decoding processes (0 decodes in this process); they
    are started each epoch, since the image size may change between epochs.
    """

    def __init__(
        self,
        files: Sequence[str | Path],
        labels: torch.Tensor,
        *,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        image_size: int,
        workers: int,
        augment: str = "crop_flip",
        shuffle: bool = True,
        drop_last: bool = True,
        channels_last: bool = True,
        seed: int = 0,
        crop_padding: int = 4,
        randaugment_magnitude: float = 0.0,
        randaugment_ops: int = 2,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str = "cpu",
    ):
        if len(files) == 0:
            raise ValueError("files must hold at least one image file, got 0")
        if labels.dtype != torch.int64 or labels.shape != (len(files),) or labels.device.type != "cpu":
            raise ValueError(
                f"labels must be an int64 ({len(files)},) tensor on the CPU, got {labels.dtype} "
                f"{tuple(labels.shape)} on {labels.device}"
            )
        check_int("image_size", image_size, 1, MAX_IMAGE_SIZE)
        check_int("workers", workers, 0)
        self.device = torch.device(device)
        super().__init__(len(files), 3, batch_size=batch_size, mean=mean, std=std, augment=augment,
                         shuffle=shuffle, drop_last=drop_last, channels_last=channels_last, seed=seed,
                         crop_padding=crop_padding, randaugment_magnitude=randaugment_magnitude,
                         randaugment_ops=randaugment_ops, rank=rank, world_size=world_size, device=self.device)

        # Paths as one fixed-width bytes array, not Python objects: forked workers that read them then touch no
        # reference counts, so they share these pages with the parent instead of copying them (a million Path
        # objects would be copied into every worker).
        self._paths = np.array([os.fsencode(path) for path in files])
        self._labels = labels.numpy()
        self.image_size = image_size
        self.workers = workers

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._check_shares()
        epoch = self._epoch
        self._epoch += 1
        count = self._paths.shape[0]
        if self.shuffle:  # DeviceBatches' draw on CPU: the same order for the same seed and epoch
            order = torch.randperm(count, generator=torch.Generator().manual_seed(_derived_seed(self.seed, 2, epoch)))
        else:
            order = torch.arange(count)
        samples = _EpochSamples(
            self._paths, self._labels, augment=self.augment, image_size=self.image_size, padding=self.crop_padding,
            seed=self.seed, epoch=epoch,
        )
        loader = DataLoader(
            samples,
            batch_sampler=_RankShares(order, self),
            num_workers=self.workers,
            collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
            # Its own generator: a DataLoader otherwise draws its workers' base seed from the global generator each
            # epoch, shifting the training's own draws (dropout) away from those of a cached run.
            generator=torch.Generator(),
        )
        generator = torch.Generator(device=self.device) if self.randaugment_magnitude > 0 else None
        for index, batch in enumerate(loader):
            if isinstance(batch, DataError):
                raise batch  # a worker's unreadable file, with the cached path's one-line message
            images, labels = batch
            images = images.to(self.device, non_blocking=True).to(torch.float32)
            if generator is not None:
                generator.manual_seed(_derived_seed(self.seed, _RANDAUGMENT_STREAM, epoch, self.rank, index))
                images = rand_augment(
                    images.div_(255.0), num_ops=self.randaugment_ops, magnitude=self.randaugment_magnitude,
                    generator=generator,
                ).mul_(255.0)
            images = images.mul_(self._scale).add_(self._shift)
            memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
            yield images.contiguous(memory_format=memory_format), labels.to(self.device, non_blocking=True)


class _RankShares:
    """The DataLoader's batch sampler: this rank's share of each global batch of one epoch's ``order``, cut lazily
    so that no per-sample list of the whole epoch is ever held."""

    def __init__(self, order: torch.Tensor, batches: StreamingBatches):
        # The epoch's settings, taken once: a change of batches' attributes applies from the next epoch on.
        self.order, self.length = order, len(batches)
        self.batch_size, self.share = batches.batch_size, batches.batch_size // batches.world_size
        self.offset = batches.rank * self.share

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[list[int]]:
        for global_start in range(0, self.length * self.batch_size, self.batch_size):
            start = global_start + self.offset
            yield self.order[start : start + self.share].tolist()  # a final partial batch only with one rank


class _EpochSamples(Dataset):
    """One epoch's samples: index -> (uint8 (3, S, S) image, label), decoded and augmented at the epoch's size.

    An unreadable file yields its :class:`DataError` instead of an image, so that :func:`_collate` hands it to the
    main process, which raises it as it is: raised in a worker, DataLoader would re-raise it with the worker's
    traceback folded into the message.
    """

    def __init__(
        self, paths: np.ndarray, labels: np.ndarray, *, augment: str, image_size: int, padding: int, seed: int,
        epoch: int,
    ):
        self.paths, self.labels = paths, labels
        self.augment, self.image_size, self.padding = augment, image_size, padding
        self.seed, self.epoch = seed, epoch

    def __len__(self) -> int:
        return self.paths.shape[0]

    def __getitem__(self, index: int) -> tuple[np.ndarray | DataError, int]:
        path = Path(os.fsdecode(self.paths[index]))
        # Uniform draws of this sample in this epoch: the same in any worker of any rank.
        uniforms = np.random.default_rng(_derived_seed(self.seed, _SAMPLE_AUGMENT_STREAM, self.epoch, index)).random(5)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", _pillow().DecompressionBombWarning)  # as the cached path
                image = self._decode(path, uniforms)
        except DataError as error:
            return error, int(self.labels[index])
        return image, int(self.labels[index])

    def _decode(self, path: Path, uniforms: np.ndarray) -> np.ndarray:
        if self.augment in ("resized_crop_flip", "resized_crop"):
            return _resized_crop(path, self.image_size, uniforms, flip=self.augment == "resized_crop_flip")
        image = _decode_image(path, self.image_size)
        if self.augment in ("crop_flip", "crop"):
            # As DeviceBatches' crop_flip: offsets uniform in [0, 2 * padding], flip with probability 1/2.
            choices = 2 * self.padding + 1
            top, left = int(uniforms[0] * choices), int(uniforms[1] * choices)
            side = self.image_size
            padded = np.pad(image, ((0, 0), (self.padding, self.padding), (self.padding, self.padding)))
            image = padded[:, top : top + side, left : left + side]
            if self.augment == "crop_flip" and uniforms[2] < 0.5:
                image = image[:, :, ::-1]
        return image


def _resized_crop(path: Path, size: int, uniforms: np.ndarray, *, flip: bool) -> np.ndarray:
    """A random-resized crop of the original image (uniforms: area scale, log aspect ratio, horizontal and vertical
    position, flip), resized to uint8 (3, size, size); a file that does not decode raises the cached path's error.
    """
    Image = _pillow()
    try:
        with Image.open(path) as image:
            width, height = image.size
            area = width * height * (0.35 + 0.65 * uniforms[0])
            ratio = math.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * uniforms[1])
            crop_width, crop_height = min(width, math.sqrt(area * ratio)), min(height, math.sqrt(area / ratio))
            left, top = (width - crop_width) * uniforms[2], (height - crop_height) * uniforms[3]
            # JPEG: decode at the smallest scale that keeps the crop's shorter side at least `size` pixels.
            reduction = max(1.0, min(crop_width, crop_height) / size)
            image.draft("RGB", (math.ceil(width / reduction), math.ceil(height / reduction)))
            scale_x, scale_y = image.size[0] / width, image.size[1] / height
            box = (left * scale_x, top * scale_y, (left + crop_width) * scale_x, (top + crop_height) * scale_y)
            image = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR, box=box)
            if flip and uniforms[4] < 0.5:
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)
    except Exception:
        _decode_image(path, size)  # raises the cached path's one-line DataError for a file that does not decode
        raise  # the file decodes: the failure is this crop's own


def _collate(samples: list[tuple[np.ndarray | DataError, int]]) -> tuple[torch.Tensor, torch.Tensor] | DataError:
    """Samples -> (uint8 (B, 3, S, S), int64 (B,)), or the first unreadable file's DataError (see _EpochSamples)."""
    for image, _ in samples:
        if isinstance(image, DataError):
            return image
    images = torch.from_numpy(np.stack([image for image, _ in samples]))
    return images, torch.tensor([label for _, label in samples], dtype=torch.int64)
