"""ONNX export reproduces the PyTorch network (dynamic batch), fed pixels in [0, 1] with the run's normalization
inside the graph, and says in its metadata how to feed it; or it refuses."""

import dataclasses
import json

import pytest
import torch

from nas.builder import build_model
from nas.onnx_export import OnnxExportError, export_onnx
from nas.train import ModelInput
from search_spaces import presets


def model_input(*, image_size: int = 32, in_channels: int = 3, num_classes: int = 1000,
                class_names: tuple[str, ...] | None = None) -> ModelInput:
    """A record of what a network takes, with a different mean and std per channel."""
    return ModelInput(image_size=image_size, in_channels=in_channels, num_classes=num_classes,
                      mean=(0.5, 0.4, 0.3)[:in_channels], std=(0.25, 0.2, 0.3)[:in_channels], class_names=class_names)


def normalized(images: torch.Tensor, record: ModelInput) -> torch.Tensor:
    """What the run fed its network: (pixels - mean) / std per channel."""
    mean = torch.tensor(record.mean).view(1, -1, 1, 1)
    return (images - mean) / torch.tensor(record.std).view(1, -1, 1, 1)


def test_exported_network_takes_pixels_and_matches_pytorch_for_another_batch_size(tmp_path):
    import onnxruntime

    torch.manual_seed(0)
    model = build_model(presets.get("tiny"), num_classes=7)
    record = model_input(num_classes=7)
    path = tmp_path / "tiny.onnx"
    difference = export_onnx(model, path, record)
    assert path.stat().st_size > 100_000 and difference <= 1e-4
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    pixels = torch.rand(5, 3, 32, 32)
    (logits,) = session.run(None, {"images": pixels.numpy()})
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(logits), model.eval()(normalized(pixels, record)), atol=1e-4)
        assert not torch.allclose(torch.from_numpy(logits), model(pixels), atol=1e-2)  # the graph normalizes


def test_the_metadata_says_how_to_feed_the_graph_as_onnx_runtime_reads_it(tmp_path):
    """Issue 28: the graph started with Conv and had no metadata. Read back through ONNX Runtime, the metadata
    gives the record's numbers exactly, and feeding what it says reproduces the network."""
    import numpy as np
    import onnxruntime

    torch.manual_seed(0)
    record = model_input(image_size=20, in_channels=1, num_classes=3, class_names=("cat", "dog", "owl"))
    model = build_model(presets.get("tiny"), num_classes=3, in_channels=1)
    export_onnx(model, tmp_path / "gray.onnx", record)
    session = onnxruntime.InferenceSession(str(tmp_path / "gray.onnx"), providers=["CPUExecutionProvider"])
    metadata = session.get_modelmeta().custom_metadata_map
    assert int(metadata["image_size"]) == 20 and int(metadata["in_channels"]) == 1
    assert int(metadata["num_classes"]) == 3 and json.loads(metadata["class_names"]) == ["cat", "dog", "owl"]
    assert tuple(json.loads(metadata["mean"])) == record.mean and tuple(json.loads(metadata["std"])) == record.std
    assert "(batch, 1, 20, 20)" in metadata["input"] and "[0, 1]" in metadata["input"]
    assert metadata["normalization"].startswith("inside the graph")
    uint8 = np.random.default_rng(0).integers(0, 256, (2, 1, 20, 20), dtype=np.uint8)
    (logits,) = session.run(None, {"images": (uint8 / 255).astype(np.float32)})
    assert logits.shape == (2, 3)
    with torch.no_grad():
        expected = model.eval()(normalized(torch.from_numpy(uint8).float() / 255, record))
    assert torch.allclose(torch.from_numpy(logits), expected, atol=1e-4)
    no_names = model_input(num_classes=7)
    export_onnx(build_model(presets.get("tiny"), num_classes=7), tmp_path / "rgb.onnx", no_names)
    session = onnxruntime.InferenceSession(str(tmp_path / "rgb.onnx"), providers=["CPUExecutionProvider"])
    assert "class_names" not in session.get_modelmeta().custom_metadata_map  # the data named no classes


def test_a_record_of_other_classes_than_the_network_gives_is_refused(tmp_path):
    with pytest.raises(OnnxExportError, match="the network gives 7 logits, but its input record says 5 classes"):
        export_onnx(build_model(presets.get("tiny"), num_classes=7), tmp_path / "x.onnx", model_input(num_classes=5))
    assert not (tmp_path / "x.onnx").exists()


def test_missing_packages_are_named(tmp_path, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "onnxscript" else real_find_spec(name, *args))
    with pytest.raises(OnnxExportError, match=r"needs onnxscript: pip install 'training-aware-nas\[onnx\]'"):
        export_onnx(build_model(presets.get("tiny")), tmp_path / "x.onnx", model_input())
    assert not (tmp_path / "x.onnx").exists()


def test_one_channel_network_exports_with_a_one_channel_input_and_leaves_no_temporary(tmp_path):
    import onnx

    torch.manual_seed(0)
    model = build_model(presets.get("tiny"), num_classes=4, in_channels=1)
    path = tmp_path / "out" / "gray.onnx"
    assert export_onnx(model, path, model_input(in_channels=1, num_classes=4)) <= 1e-4
    dimensions = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert [dimension.dim_value for dimension in dimensions][1:] == [1, 32, 32]
    assert [entry.name for entry in path.parent.iterdir()] == ["gray.onnx"]  # one self-contained file


def test_a_model_that_does_not_reproduce_is_never_written(tmp_path):
    (tmp_path / "keep.onnx").write_bytes(b"previous export")
    with pytest.raises(OnnxExportError, match="ONNX logits differ from PyTorch's"):
        export_onnx(build_model(presets.get("tiny")), tmp_path / "keep.onnx", model_input(), tolerance=-1.0)
    assert (tmp_path / "keep.onnx").read_bytes() == b"previous export"
    assert [entry.name for entry in tmp_path.iterdir()] == ["keep.onnx"]


def test_saved_weights_export_as_the_network_they_were_saved_from(tmp_path):
    import onnxruntime

    from nas.onnx_export import export_weights_onnx

    spec = dataclasses.replace(presets.get("tiny"), in_channels=1)
    torch.manual_seed(0)
    model = build_model(spec, num_classes=5, in_channels=1).eval()
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    path = tmp_path / "out" / "tiny.onnx"
    record = model_input(image_size=24, in_channels=1, num_classes=5)
    assert export_weights_onnx(spec, tmp_path / "weights.pt", path, record) <= 1e-4
    pixels = torch.rand(2, 1, 24, 24)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"images": pixels.numpy()})
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(logits), model(normalized(pixels, record)), atol=1e-4)
    with pytest.raises(RuntimeError, match="size mismatch"):  # weights of another network are not exported
        export_weights_onnx(presets.get("tiny"), tmp_path / "weights.pt", tmp_path / "x.onnx",
                            model_input(image_size=24, num_classes=5))
    assert not (tmp_path / "x.onnx").exists()


def test_the_exporter_says_nothing_about_itself(tmp_path, capfd, recwarn):
    """No 'torchvision is not installed' line per detection operator, no pytree FutureWarning (issue 15, point 7);
    the exporter's logger is left as it was."""
    import logging

    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    export_onnx(build_model(presets.get("tiny"), num_classes=3), tmp_path / "quiet.onnx", model_input(num_classes=3))
    err = capfd.readouterr().err
    assert "torchvision" not in err and "LeafSpec" not in err, err
    assert not [warning for warning in recwarn if issubclass(warning.category, FutureWarning)]
    assert logger.level == level
