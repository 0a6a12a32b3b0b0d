"""Image folders streamed from their files (nas/streaming.py): the same split, order and evaluation images as the
cached imagefolder path, ranks that add up to one, per-epoch image sizes, resumption and the cached path's errors."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from PIL.JpegImagePlugin import JpegImageFile

import nas.data
import nas.sources
import nas.streaming
from nas.data import DeviceBatches, load_data
from nas.sources import DataError
from nas.streaming import StreamingBatches, _resized_crop, cache_refusal, open_streaming_folder

CLASSES = ("ant", "bee", "cat")
IMAGES_PER_CLASS = 8
SIZE = 24


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """3 classes x 8 PNG images (lossless, so decoding is exact) of random pixels and sizes 20-40 px."""
    directory = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for label, name in enumerate(CLASSES):
        (directory / name).mkdir()
        for number in range(IMAGES_PER_CLASS):
            height, width = rng.integers(20, 41, size=2)
            pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
            pixels[..., label] //= 2  # a class-dependent colour, so the channels differ
            Image.fromarray(pixels).save(directory / name / f"{number}.png")
    return directory


def streaming(files, labels, **options):
    settings = {"batch_size": 6, "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "image_size": SIZE,
                "workers": 0, **options}
    return StreamingBatches(files, labels, **settings)


def epoch(batches):
    """One epoch's batches as (all images, all labels), concatenated."""
    pairs = list(batches)
    assert len(pairs) == len(batches)
    return torch.cat([images for images, _ in pairs]), torch.cat([labels for _, labels in pairs])


def test_the_split_classes_and_statistics_are_the_cached_paths(folder):
    streamed = open_streaming_folder(folder, image_size=SIZE, val_fraction=0.25, seed=3)
    cached = load_data(f"imagefolder:{folder}", image_size=SIZE, val_fraction=0.25, seed=3)
    assert streamed.name == cached.name == f"imagefolder:{folder}"
    assert (streamed.num_classes, streamed.in_channels, streamed.image_size) == (3, 3, SIZE)
    assert streamed.class_names == CLASSES and streamed.flips
    assert torch.equal(streamed.train_labels, cached.train_labels)
    assert torch.equal(streamed.val_labels, cached.val_labels)
    assert len(streamed.train_files) == 18 and len(streamed.val_files) == 6
    assert not set(streamed.train_files) & set(streamed.val_files)
    assert repr(streamed) == f"StreamingFolder(name='imagefolder:{folder}', train=18 files, val=6 files, " \
                             f"num_classes=3, image_size={SIZE})"
    # Fewer training images than the sample: the estimate is the cached path's exact statistics at 64 px.
    at_64 = load_data(f"imagefolder:{folder}", image_size=64, val_fraction=0.25, seed=3)
    assert (streamed.mean, streamed.std) == (at_64.mean, at_64.std)
    assert open_streaming_folder(folder).image_size == 64


def test_evaluation_batches_are_the_cached_images_bit_for_bit(folder):
    streamed = open_streaming_folder(folder, val_fraction=0.25, seed=1)
    cached = load_data(f"imagefolder:{folder}", image_size=SIZE, val_fraction=0.25, seed=1)
    options = {"batch_size": 4, "mean": cached.mean, "std": cached.std, "augment": "none", "image_size": SIZE,
               "shuffle": False, "drop_last": False}
    expected = list(DeviceBatches(cached.val_images, cached.val_labels, **options))
    batches = list(StreamingBatches(streamed.val_files, streamed.val_labels, workers=0, **options))
    assert [images.shape[0] for images, _ in batches] == [4, 2]  # the partial batch is kept
    for (images, labels), (expected_images, expected_labels) in zip(batches, expected, strict=True):
        assert images.dtype == torch.float32 and images.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(images, expected_images) and torch.equal(labels, expected_labels)


def test_the_epoch_order_is_device_batches_order(folder):
    streamed = open_streaming_folder(folder, val_fraction=0.25)
    cached = load_data(f"imagefolder:{folder}", image_size=SIZE, val_fraction=0.25)
    options = {"batch_size": 6, "mean": cached.mean, "std": cached.std, "augment": "none", "image_size": SIZE,
               "seed": 7}
    expected = DeviceBatches(cached.train_images, cached.train_labels, **options)
    batches = StreamingBatches(streamed.train_files, streamed.train_labels, workers=0, **options)
    global_state = torch.get_rng_state()
    orders = []
    for _ in range(2):  # epochs are shuffled differently, and alike in both
        images, labels = epoch(batches)
        expected_images, expected_labels = epoch(expected)
        assert torch.equal(images, expected_images) and torch.equal(labels, expected_labels)
        orders.append(labels)
    assert not torch.equal(*orders)
    assert torch.equal(torch.get_rng_state(), global_state)  # the global generator is not drawn from


@pytest.mark.parametrize("augment", ["resized_crop_flip", "crop_flip"])
def test_ranks_put_together_are_one_rank_and_read_only_their_files(folder, augment, monkeypatch):
    streamed = open_streaming_folder(folder, val_fraction=0.25)
    files, labels = streamed.train_files, streamed.train_labels
    one_rank = streaming(files, labels, augment=augment, seed=5)
    first, second = epoch(one_rank), epoch(one_rank)
    assert first[0].shape == (18, 3, SIZE, SIZE) and not torch.equal(first[0], second[0])
    plain = epoch(streaming(files, labels, augment="none", seed=5))
    assert torch.equal(first[1], plain[1]) and not torch.equal(first[0], plain[0])  # augmented, in the same order

    read = {0: [], 1: []}  # file indices decoded by each rank
    original = nas.streaming._EpochSamples.__getitem__
    ranks = [streaming(files, labels, augment=augment, seed=5, rank=rank, world_size=2) for rank in range(2)]
    for rank, batches in enumerate(ranks):
        monkeypatch.setattr(nas.streaming._EpochSamples, "__getitem__",
                            lambda self, index, rank=rank: read[rank].append(index) or original(self, index))
        assert epoch(batches)[0].shape[0] == 9
    assert sorted(read[0] + read[1]) == list(range(18))  # each file once, by one rank only
    monkeypatch.undo()
    rank_batches = [list(ranks[rank]) for rank in range(2)]  # epoch 1, batch by batch: rank 0's rows first
    for (images_0, labels_0), (images_1, labels_1), start in zip(*rank_batches, range(0, 18, 6), strict=True):
        assert torch.equal(torch.cat([images_0, images_1]), second[0][start : start + 6])
        assert torch.equal(torch.cat([labels_0, labels_1]), second[1][start : start + 6])


def test_worker_processes_decode_the_batches_of_this_process(folder):
    streamed = open_streaming_folder(folder, val_fraction=0.25)
    batches = [streaming(streamed.train_files, streamed.train_labels, augment="resized_crop_flip", workers=workers)
               for workers in (0, 2)]
    for _ in range(2):
        (images, labels), (parallel_images, parallel_labels) = epoch(batches[0]), epoch(batches[1])
        assert torch.equal(images, parallel_images) and torch.equal(labels, parallel_labels)


def test_a_jpeg_is_cropped_from_a_reduced_decode_at_the_same_place(tmp_path, monkeypatch):
    rows, columns = np.mgrid[0:40, 0:48]
    gradient = np.stack([columns * 5, rows * 6, (rows + columns) * 3], axis=-1).astype(np.uint8)
    Image.fromarray(gradient).save(tmp_path / "a.jpg", quality=95)
    uniforms = np.array([0.5, 0.3, 0.9, 0.1, 0.2])  # a ~34 x 38 px crop to 8 px: JPEG decodes at 1/4 scale
    reduced = _resized_crop(tmp_path / "a.jpg", 8, uniforms, flip=True)
    monkeypatch.setattr(JpegImageFile, "draft", lambda self, mode, size: None)
    full = _resized_crop(tmp_path / "a.jpg", 8, uniforms, flip=True)
    assert reduced.shape == full.shape == (3, 8, 8)
    assert np.abs(reduced.astype(int) - full).max() <= 8  # a box not rescaled to the reduced image is far off


def test_a_final_partial_batch_is_kept_or_dropped(folder):
    streamed = open_streaming_folder(folder, val_fraction=0.25)
    files, labels = streamed.train_files, streamed.train_labels
    kept = streaming(files, labels, batch_size=8, drop_last=False, augment="none", shuffle=False)
    assert len(kept) == 3 and [images.shape[0] for images, _ in kept] == [8, 8, 2]
    dropped = streaming(files, labels, batch_size=8, augment="none")
    assert len(dropped) == 2 and [images.shape[0] for images, _ in dropped] == [8, 8]
    ranks = [streaming(files, labels, batch_size=8, augment="none", rank=rank, world_size=2) for rank in range(2)]
    assert [[images.shape[0] for images, _ in batches] for batches in ranks] == [[4, 4], [4, 4]]


def test_the_image_size_changes_between_epochs_and_a_resumed_stream_repeats_the_epoch(folder):
    streamed = open_streaming_folder(folder, val_fraction=0.25)
    files, labels = streamed.train_files, streamed.train_labels
    batches = streaming(files, labels, augment="resized_crop_flip", image_size=16, randaugment_magnitude=9.0)
    assert epoch(batches)[0].shape == (18, 3, 16, 16)
    state = batches.state_dict()
    assert state == {"epoch": 1}
    batches.image_size = 32  # as progressive learning does before an epoch
    images, labels_1 = epoch(batches)
    assert images.shape == (18, 3, 32, 32)

    resumed = streaming(files, labels, augment="resized_crop_flip", image_size=32, randaugment_magnitude=9.0)
    resumed.load_state_dict(state)
    again = epoch(resumed)
    assert torch.equal(again[0], images) and torch.equal(again[1], labels_1)
    resumed.load_state_dict(state)
    resumed.randaugment_magnitude = 0.0
    assert not torch.equal(epoch(resumed)[0], images)  # RandAugment was on


@pytest.mark.parametrize("workers", [0, 2])
def test_a_corrupt_image_gives_the_cached_paths_one_line_error(folder, tmp_path, workers):
    directory = tmp_path / "folder"
    shutil.copytree(folder, directory)
    (directory / "bee" / "x.jpg").write_bytes(b"\x00garbage, not a JPEG" * 8)
    with pytest.raises(DataError) as cached:
        load_data(f"imagefolder:{directory}", image_size=SIZE)
    message = str(cached.value)
    assert message.startswith(f"imagefolder: cannot read image {directory / 'bee' / 'x.jpg'}: ")
    assert message.endswith("; remove or replace it") and "\n" not in message

    files = sorted(directory.rglob("*.*g"))
    labels = torch.zeros(len(files), dtype=torch.int64)
    for augment in ("resized_crop_flip", "none"):
        with pytest.raises(DataError) as streamed:
            list(streaming(files, labels, augment=augment, workers=workers))
        assert str(streamed.value) == message


def test_batches_refuse_bad_settings(folder):
    streamed = open_streaming_folder(folder, val_fraction=0.25)
    files, labels = streamed.train_files, streamed.train_labels
    with pytest.raises(ValueError, match=r"batch_size 6 \(the global batch\) must be divisible by world_size 4"):
        streaming(files, labels, world_size=4)
    batches = streaming(files, labels, world_size=2)
    batches.batch_size = 5  # a change between epochs is checked when the epoch starts
    with pytest.raises(ValueError, match="batch_size 5 .* must be divisible by world_size 2"):
        next(iter(batches))
    with pytest.raises(ValueError, match=r"only whole global batches are shared \(drop_last=True\)"):
        streaming(files, labels, world_size=2, drop_last=False)
    with pytest.raises(ValueError, match=r"rank must be an integer in \[0, 2\), got 2"):
        streaming(files, labels, rank=2, world_size=2)
    with pytest.raises(ValueError, match="augment must be one of"):
        streaming(files, labels, augment="auto")
    with pytest.raises(ValueError, match=r"labels must be an int64 \(18,\) tensor on the CPU"):
        streaming(files, labels[:5])
    with pytest.raises(DataError, match=r"val_fraction must be a number in \(0, 0.5\]"):
        open_streaming_folder(folder, val_fraction=0.6)


def test_cache_refusal_says_why_the_cached_path_cannot_take_a_folder(folder, monkeypatch):
    assert cache_refusal(folder, SIZE) is None
    # 24 images of 3 x 24 x 24 pixels are 41,472 bytes, held twice while cached.
    assert cache_refusal(folder, SIZE, memory_bytes=2 * 41_472) is None
    reason = cache_refusal(folder, SIZE, memory_bytes=2 * 41_472 - 1)
    assert reason.startswith(f"data source 'imagefolder:{folder}': 24 images of 3x24x24 pixels need about")
    # Two ranks of a node load a copy each: the memory that sufficed for one is short for both.
    reason = cache_refusal(folder, SIZE, memory_bytes=4 * 41_472 - 2, processes=2)
    assert reason.endswith("of memory available to each of 2 processes loading it")
    assert cache_refusal(folder, SIZE, memory_bytes=4 * 41_472, processes=2) is None
    monkeypatch.setattr(nas.sources, "MAX_DATASET_BYTES", 41_471)
    assert "the limit is" in cache_refusal(folder, SIZE)


# --- nas train on a streamed folder ----------------------------------------------------------------------------------

def _copy(folder, tmp_path):
    """The images of ``folder`` without the cache other tests left in it."""
    return shutil.copytree(folder, tmp_path / "folder", ignore=shutil.ignore_patterns(nas.data.CACHE_DIRNAME))


def _train(folder, *extra):
    from nas.cli import main

    return main(["train", "tiny", "--data", f"imagefolder:{folder}", "--epochs", "2", "--batch-size", "6",
                 "--loader-workers", "0", "--threads", "1", *extra])


def test_nas_train_streams_a_folder_at_each_stages_size_and_caches_nothing(folder, tmp_path, capsys):
    copy = _copy(folder, tmp_path)
    assert _train(copy, "--stream", "--progressive", "--stages", "2", "--image-size-range", "16", "24",
                  "--json") == 0
    record = json.loads(capsys.readouterr().out)
    assert record["status"] == "ok" and [epoch["image_size"] for epoch in record["history"]] == [16, 24]
    assert not (copy / nas.data.CACHE_DIRNAME).exists()


def test_a_folder_whose_cache_would_not_fit_is_streamed_by_itself(folder, tmp_path, capsys, monkeypatch):
    copy = _copy(folder, tmp_path)
    monkeypatch.setattr(nas.streaming, "_available_memory", lambda: 1000)
    assert _train(copy, "--image-size", "16") == 0
    assert f"streaming imagefolder:{copy} (the cached path would not fit: " in capsys.readouterr().err
    assert not (copy / nas.data.CACHE_DIRNAME).exists()


def test_a_cached_folder_is_never_upsampled_by_a_later_stage(folder, tmp_path, capsys):
    copy = _copy(folder, tmp_path)
    assert _train(copy, "--image-size", "16", "--progressive", "--stages", "2", "--image-size-range", "16", "24") == 2
    assert "is cached at 16px but the run trains at up to 24px" in capsys.readouterr().err


def test_a_corrupt_image_in_a_streamed_folder_gets_the_cached_paths_line(folder, tmp_path, capsys):
    copy = _copy(folder, tmp_path)
    (copy / "bee" / "x.jpg").write_bytes(b"not an image")
    assert _train(copy, "--image-size", "16") == 2
    cached_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert cached_line.startswith("nas train: error: imagefolder: cannot read image ")
    code = _train(copy, "--image-size", "16", "--stream")
    assert code in (1, 2)  # refused while estimating the statistics, or a failed run when met in an epoch
    captured = capsys.readouterr()
    assert cached_line.removeprefix("nas train: error: ") in captured.out + captured.err


def test_the_library_still_resizes_a_cached_folder_when_asked(folder, tmp_path):
    """Only nas train refuses to upsample a cached folder: the coefficient search trains grid points above the
    loaded size on purpose, through train_and_evaluate."""
    from nas.recipe import TrainConfig
    from nas.train import train_and_evaluate
    from search_spaces import presets

    data = load_data(f"imagefolder:{_copy(folder, tmp_path)}", image_size=16, seed=0)
    result = train_and_evaluate(presets.get("tiny"), data, TrainConfig(epochs=1, image_size=24, batch_size=6,
                                                                        measure_step_time=False, threads=1))
    assert result.ok and result.history[0].image_size == 24, result.failure_reason
