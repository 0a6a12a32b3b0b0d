"""ONNX export of a trained network, checked against PyTorch.

Uses torch's ``torch.export``-based ONNX exporter (which needs ``onnxscript``) with a dynamic batch dimension,
then runs the serialized model in ONNX Runtime on a test batch of another size and compares the logits with
PyTorch's. Only a model that reproduces PyTorch's logits is written, as one self-contained file through
:func:`~search_spaces.files.write_file` (so never through a fixed temporary name or a planted link). Install with
``pip install training-aware-nas[onnx]``. :func:`export_weights_onnx` exports the weights a run saved.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import warnings
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from nas.builder import build_model
from search_spaces.files import write_file
from search_spaces.spec import ArchSpec

REQUIRED_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
_REGISTRATION_LOGGER = "torch.onnx._internal.exporter._registration"  # "torchvision is not installed. Skipping ..."
MAX_PROTOBUF_BYTES = 2**31 - 1  # one ONNX file (a protobuf message) holds at most 2 GiB, weights included


class OnnxExportError(RuntimeError):
    """The ONNX file could not be written, or does not reproduce the PyTorch model."""


def export_onnx(
    model: nn.Module, path: Path, *, image_size: int, in_channels: int = 3, tolerance: float = 1e-4
) -> float:
    """Writes ``model`` (in eval mode) to ``path`` and returns the largest logit difference to PyTorch.

    ``in_channels`` is the input images' channels (the data's). ``path``'s directory is created if missing.
    """
    missing = [name for name in REQUIRED_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise OnnxExportError(
            f"ONNX export needs {', '.join(missing)}: pip install 'training-aware-nas[onnx]'"
        )
    import onnxruntime

    model = model.eval().to("cpu", memory_format=torch.contiguous_format)
    example = torch.randn(2, in_channels, image_size, image_size)  # (N, C, H, W)
    with _exporter_noise_silenced():
        program = torch.onnx.export(  # no file argument: the program is serialized here, then written once
            model,
            (example,),
            dynamo=True,
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
            verbose=False,
        )
    proto = program.model_proto
    if proto.ByteSize() > MAX_PROTOBUF_BYTES:
        raise OnnxExportError(
            f"{path}: the network is {proto.ByteSize() / 2**30:.1f} GiB as ONNX, above the 2 GiB of one ONNX file"
        )
    serialized = proto.SerializeToString()
    test = torch.randn(3, in_channels, image_size, image_size, generator=torch.Generator().manual_seed(0))
    session = onnxruntime.InferenceSession(serialized, providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(None, {"images": test.numpy()})
    with torch.no_grad():
        torch_logits = model(test)
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


def export_weights_onnx(
    spec: ArchSpec, weights: Path, path: Path, *, num_classes: int, in_channels: int, image_size: int
) -> float:
    """Builds ``spec``'s network, loads the state dict saved at ``weights`` (``nas train --save``'s ``weights.pt``)
    and exports it with :func:`export_onnx`; returns the largest logit difference to PyTorch.

    ``in_channels`` is the data's; ``image_size`` the size the run evaluated at
    (:func:`nas.train.evaluation_image_size`).
    """
    model = build_model(spec, num_classes, in_channels)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return export_onnx(model, path, image_size=image_size, in_channels=in_channels)
