"""ONNX export of a trained network that says how to feed it, checked against PyTorch.

Uses torch's ``torch.export``-based ONNX exporter (which needs ``onnxscript``) with a dynamic batch dimension,
then runs the serialized model in ONNX Runtime on a test batch of another size and compares the logits with
PyTorch's. Only a model that reproduces PyTorch's logits is written, as one self-contained file through
:func:`~search_spaces.files.write_file` (so never through a fixed temporary name or a planted link). Install with
``pip install training-aware-nas[onnx]``. :func:`export_weights_onnx` exports the weights a run saved.

The file alone is enough to run the network. The normalization the run trained with is folded into the graph
(:class:`PixelInput`): the graph takes pixels scaled to [0, 1] (``uint8 / 255``, what image libraries give) and
computes ``(images - mean) / std`` itself. Folded rather than only described, because normalization is the step
a consumer gets wrong without any error: none at all, or ImageNet's mean and std, still gives logits, only worse
ones. The model's metadata (``metadata_props``, :func:`onnx_metadata`; ONNX Runtime's
``InferenceSession(path).get_modelmeta().custom_metadata_map``) says the rest: the input's layout and scale, the
image size to resize to, the channels, the number of classes (and their names where the data names them), and the
mean and std the graph applies.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import nn

from nas.builder import build_model
from nas.train import ModelInput
from search_spaces.files import write_file
from search_spaces.spec import ArchSpec

REQUIRED_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
_REGISTRATION_LOGGER = "torch.onnx._internal.exporter._registration"  # "torchvision is not installed. Skipping ..."
MAX_PROTOBUF_BYTES = 2**31 - 1  # one ONNX file (a protobuf message) holds at most 2 GiB, weights included


class OnnxExportError(RuntimeError):
    """The ONNX file could not be written, or does not reproduce the PyTorch model."""


class PixelInput(nn.Module):
    """``network`` fed with pixels in [0, 1]: each channel is normalized, ``(images - mean) / std``, inside the
    module (so inside an exported graph), as the run's batches were before they reached the network."""

    def __init__(self, network: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.network = network
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) pixels in [0, 1] -> (N, classes)
        return self.network((images - self.mean) / self.std)


def onnx_metadata(model_input: ModelInput) -> dict[str, str]:
    """The ONNX model's metadata (``metadata_props``, strings only): how to feed the exported graph and read its
    output. Numbers are decimal text, lists JSON; ``class_names`` only where the data names its classes."""
    size, channels, classes = model_input.image_size, model_input.in_channels, model_input.num_classes
    metadata = {
        "input": f"images: float32 (batch, {channels}, {size}, {size}), pixels scaled to [0, 1] (uint8 / 255), "
                 "channels in the training data's order; the graph normalizes them",
        "output": f"logits: float32 (batch, {classes}), one per class in label order; softmax gives probabilities",
        "image_size": str(size),
        "resize": f"to {size}x{size}, bilinear with antialiasing, as the training images were",
        "in_channels": str(channels),
        "num_classes": str(classes),
        "normalization": "inside the graph: (images - mean) / std per channel; feed pixels in [0, 1], unnormalized",
        "mean": json.dumps(list(model_input.mean)),
        "std": json.dumps(list(model_input.std)),
    }
    if model_input.class_names is not None:
        metadata["class_names"] = json.dumps(list(model_input.class_names))
    return metadata


def export_onnx(model: nn.Module, path: Path, model_input: ModelInput, *, tolerance: float = 1e-4) -> float:
    """Writes ``model`` (in eval mode) to ``path``, fed as ``model_input`` says (normalization folded in:
    :class:`PixelInput`; :func:`onnx_metadata`), and returns the largest logit difference to PyTorch.

    ``model`` must give ``model_input.num_classes`` logits for ``model_input.in_channels``-channel images.
    ``path``'s directory is created if missing.
    """
    missing = [name for name in REQUIRED_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise OnnxExportError(
            f"ONNX export needs {', '.join(missing)}: pip install 'training-aware-nas[onnx]'"
        )
    import onnx
    import onnxruntime

    network = model.eval().to("cpu", memory_format=torch.contiguous_format)
    pixels = PixelInput(network, model_input.mean, model_input.std).eval()
    shape = (model_input.in_channels, model_input.image_size, model_input.image_size)
    example = torch.rand(2, *shape)  # (N, C, H, W) pixels in [0, 1]
    with _exporter_noise_silenced():
        program = torch.onnx.export(  # no file argument: the program is serialized here, then written once
            pixels,
            (example,),
            dynamo=True,
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes={"images": {0: torch.export.Dim("batch")}},
            verbose=False,
        )
    proto = program.model_proto
    onnx.helper.set_model_props(proto, onnx_metadata(model_input))
    if proto.ByteSize() > MAX_PROTOBUF_BYTES:
        raise OnnxExportError(
            f"{path}: the network is {proto.ByteSize() / 2**30:.1f} GiB as ONNX, above the 2 GiB of one ONNX file"
        )
    serialized = proto.SerializeToString()
    test = torch.rand(3, *shape, generator=torch.Generator().manual_seed(0))
    session = onnxruntime.InferenceSession(serialized, providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(None, {"images": test.numpy()})
    if onnx_logits.shape[1] != model_input.num_classes:
        raise OnnxExportError(f"{path}: the network gives {onnx_logits.shape[1]} logits, but its input record says "
                              f"{model_input.num_classes} classes")
    with torch.no_grad():
        torch_logits = pixels(test)
    difference = float((torch.from_numpy(onnx_logits) - torch_logits).abs().max())
    if not difference <= tolerance:
        raise OnnxExportError(f"{path}: ONNX logits differ from PyTorch's by {difference:.3g} (> {tolerance:g})")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file(path, serialized)
    return difference


@contextlib.contextmanager
def _exporter_noise_silenced() -> Iterator[None]:
    """Silences what torch's exporter says about itself, not about the model: a warning per torchvision operator
    it skips (a detection op this network never uses, when torchvision is absent) and a FutureWarning on
    pytree internals. Anything else it reports still shows."""
    registration = logging.getLogger(_REGISTRATION_LOGGER)
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                                    category=FutureWarning)
            yield
    finally:
        registration.setLevel(level)


def export_weights_onnx(spec: ArchSpec, weights: Path, path: Path, model_input: ModelInput) -> float:
    """Builds ``spec``'s network for ``model_input``'s classes and channels, loads the state dict saved at
    ``weights`` (``nas train --save``'s ``weights.pt``) and exports it with :func:`export_onnx`; returns the largest
    logit difference to PyTorch.

    ``model_input`` is the run's (:func:`nas.train.model_input`, saved in its ``result.json``): the data's channels,
    classes and normalization at the image size the run evaluated at.
    """
    model = build_model(spec, model_input.num_classes, model_input.in_channels)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return export_onnx(model, path, model_input)
