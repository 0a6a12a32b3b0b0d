"""Fashion-MNIST as the npz files the benchmarks and `nas` read, made from the official idx files.

Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017; Zalando SE, MIT licence): 28 x 28 grayscale photographs of
clothing in 10 classes, the official split 60,000 training / 10,000 test images. Small CNNs reach 89-93%, so
architectures differ by more than a 10,000-image test set's noise (unlike MNIST, where every small network scores
about 98%).

Where the idx files come from (either; the four files, gzipped or not):
- Debian's package ``dataset-fashion-mnist``, reachable with apt on Debian and Ubuntu machines:
  ``apt-get download dataset-fashion-mnist && dpkg-deb -x dataset-fashion-mnist_*.deb pkg``; the files are in
  ``pkg/usr/share/datasets/fashion-mnist/``.
- Zalando's repository, github.com/zalandoresearch/fashion-mnist, folder ``data/fashion``.

    python benchmarks/fashion_mnist.py pkg/usr/share/datasets/fashion-mnist -o data/

checks each file's md5 (of its decompressed bytes, the upstream sums) and writes ``data/fashion-mnist.npz``
(``x_train``, ``y_train``, ``x_test``, ``y_test``: the official split, Keras names; ``npz:data/fashion-mnist.npz``
reads the training split, ``npz:data/fashion-mnist.npz?images=x_test&labels=y_test`` the test split) and
``data/fashion-mnist-20k.npz`` (``images``, ``labels``: 2,000 training images per class drawn with seed 0, then
shuffled: a search-sized set with no test image in it). An existing output is kept unless ``--force``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import sys
from pathlib import Path
from typing import Mapping

import numpy as np

from search_spaces.files import write_file

#: The four idx files by role, and the md5 of each one's decompressed bytes (Zalando's README; Debian's package).
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
OFFICIAL_MD5 = {
    "train_images": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train_labels": "9018921c3c673c538a1fc5bad174d6f9",
    "test_images": "8181f5470baa50b63fa0f6fddb340f0a",
    "test_labels": "15d484375f8d13e6eb1aabb0c3f46965",
}
FULL_FILE = "fashion-mnist.npz"
SUBSET_FILE = "fashion-mnist-20k.npz"
SUBSET_PER_CLASS = 2000
SUBSET_SEED = 0
_IDX_TYPES = {0x08: np.uint8}  # idx magic's type byte -> dtype (Fashion-MNIST uses unsigned bytes only)


class FashionMnistError(ValueError):
    """An idx file that is missing, damaged or not the official one; the message names it."""


def read_idx_folder(folder: Path, md5: Mapping[str, str] = OFFICIAL_MD5) -> dict[str, np.ndarray]:
    """The four arrays by role (:data:`FILES`), each file found as ``NAME.gz`` or ``NAME`` in ``folder`` and
    checked against its ``md5`` before it is parsed; images uint8 (N, 28, 28), labels int64 (N,)."""
    arrays = {}
    for role, name in FILES.items():
        path = next((folder / candidate for candidate in (f"{name}.gz", name) if (folder / candidate).is_file()),
                    None)
        if path is None:
            raise FashionMnistError(f"{folder} has no {name}.gz (nor {name}): see this script's doc for the files")
        content = path.read_bytes()
        if path.suffix == ".gz":
            try:
                content = gzip.decompress(content)
            except (OSError, EOFError) as error:
                raise FashionMnistError(f"{path} is not a readable gzip file: {error}") from None
        digest = hashlib.md5(content).hexdigest()
        if digest != md5[role]:
            raise FashionMnistError(f"{path}: md5 of its content is {digest}, the official file's is {md5[role]}: "
                                    "a damaged download or another file; fetch it again")
        arrays[role] = parse_idx(content, str(path))
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.shape[0] != labels.shape[0]:
            raise FashionMnistError(f"{folder}: {images.shape[0]} {split} images but {labels.shape[0]} labels")
    return arrays


def parse_idx(content: bytes, name: str) -> np.ndarray:
    """An idx array (LeCun's format: two zero bytes, a type byte, a dimension count, big-endian uint32 sizes,
    then the data); labels (one dimension) come back as int64."""
    if len(content) < 4 or content[:2] != b"\0\0" or content[2] not in _IDX_TYPES:
        raise FashionMnistError(f"{name} is not an idx file of unsigned bytes")
    dimensions = content[3]
    header = 4 + 4 * dimensions
    shape = tuple(int.from_bytes(content[4 + 4 * i: 8 + 4 * i], "big") for i in range(dimensions))
    if len(content) != header + int(np.prod(shape)):
        raise FashionMnistError(f"{name}: its header declares shape {shape}, which its {len(content)} bytes do not "
                                "hold")
    array = np.frombuffer(content, dtype=_IDX_TYPES[content[2]], offset=header).reshape(shape)
    return array.astype(np.int64) if dimensions == 1 else array.copy()


def subset(images: np.ndarray, labels: np.ndarray, *, per_class: int = SUBSET_PER_CLASS,
           seed: int = SUBSET_SEED) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` images of each class drawn without replacement with ``seed``, then shuffled together."""
    generator = np.random.default_rng(seed)
    chosen = np.concatenate([generator.choice(np.flatnonzero(labels == label), per_class, replace=False)
                             for label in np.unique(labels)])
    chosen = generator.permutation(chosen)
    return images[chosen], labels[chosen]


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="the folder holding the four idx files (gzipped or not)")
    parser.add_argument("-o", "--output", type=Path, default=Path("data"), help="folder to write the npz files to")
    parser.add_argument("--force", action="store_true", help="overwrite existing npz files")
    args = parser.parse_args(argv)
    targets = [args.output / FULL_FILE, args.output / SUBSET_FILE]
    existing = [str(path) for path in targets if path.exists()]
    if existing and not args.force:
        print(f"fashion_mnist.py: error: {', '.join(existing)} exist(s); --force overwrites", file=sys.stderr)
        return 2
    try:
        arrays = read_idx_folder(args.folder)
    except FashionMnistError as error:
        print(f"fashion_mnist.py: error: {error}", file=sys.stderr)
        return 2
    write_file(targets[0], npz_bytes(x_train=arrays["train_images"], y_train=arrays["train_labels"],
                                     x_test=arrays["test_images"], y_test=arrays["test_labels"]))
    images, labels = subset(arrays["train_images"], arrays["train_labels"], per_class=SUBSET_PER_CLASS)
    write_file(targets[1], npz_bytes(images=images, labels=labels))
    print(f"wrote {targets[0]} ({len(arrays['train_labels']):,} training and {len(arrays['test_labels']):,} test "
          f"images) and {targets[1]} ({len(labels):,} training images, {SUBSET_PER_CLASS:,} per class)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
