"""Export a model to ONNX, TorchScript or a torch.export ExportedProgram, and check it against PyTorch.

Every format keeps the batch dimension dynamic and carries the model's metadata (config, preprocessing,
class names) as JSON: ONNX `metadata_props["vit"]`, TorchScript and ExportedProgram extra file "vit.json".
The check runs the exported file (onnxruntime for ONNX) and the PyTorch model on a random batch of a
different size from the one traced, so a batch size baked into the graph would fail it.

Files are written into a temporary folder beside their destination, checked there, and only then renamed
into place (`vit.runs.staged_files`): a full disk, a failed check or a kill leaves the previous export as it
was. torch's zip writer (TorchScript, ExportedProgram) aborts the whole process when a write fails, so those
formats are serialised in memory and written by Python, whose failed write is an OSError.
"""

from __future__ import annotations

import copy
import io
import json
import warnings
from pathlib import Path

import torch

from .errors import ConfigError, OutputError, VitError
from .runs import staged_files

FORMATS = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt", "exported-program": "model.pt2"}
TOLERANCE = 1e-4  # max abs difference in logits accepted between the export and PyTorch (fp32)
EXAMPLE_BATCH, CHECK_BATCH = 2, 3  # trace with one batch size, check with another


def model_metadata(model) -> str:
    pre = getattr(model, "preprocess", None)
    return json.dumps({
        "config": model.config.to_dict(),
        "preprocess": pre.to_dict() if pre is not None else None,
        "class_names": getattr(model, "class_names", None),
    })


def random_input(model, batch_size: int, seed: int = 0) -> torch.Tensor:
    H, W = model.patch_embed.img_size
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, model.patch_embed.in_chans, H, W, generator=g)


def export_onnx(model, path: Path, example: torch.Tensor) -> None:
    import onnx

    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.onnx.export(model, (example,), str(path), input_names=["images"], output_names=["logits"],
                      dynamic_shapes={"x": {0: batch}}, dynamo=True, verbose=False)
    proto = onnx.load(str(path), load_external_data=False)  # weights may sit in model.onnx.data; keep them there
    onnx.helper.set_model_props(proto, {"vit": model_metadata(model)})
    onnx.save(proto, str(path))


def run_onnx(path: Path, x: torch.Tensor) -> torch.Tensor:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


def export_torchscript(model, path: Path, example: torch.Tensor) -> None:
    # Tracing, not scripting: einops and the timm-style Python API do not script. The traced graph computes
    # the batch size from the input; the TracerWarnings are about the fixed image-size checks.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in favour of torch.export
        traced = torch.jit.trace(model, example)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer, _extra_files={"vit.json": model_metadata(model)})
    path.write_bytes(buffer.getbuffer())


def run_torchscript(path: Path, x: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path))(x)


def export_program(model, path: Path, example: torch.Tensor) -> None:
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(model, (example,), dynamic_shapes={"x": {0: batch}})
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files={"vit.json": model_metadata(model)})
    path.write_bytes(buffer.getbuffer())


def run_program(path: Path, x: torch.Tensor) -> torch.Tensor:
    return torch.export.load(str(path)).module()(x)


EXPORTERS = {
    "onnx": (export_onnx, run_onnx),
    "torchscript": (export_torchscript, run_torchscript),
    "exported-program": (export_program, run_program),
}


@torch.no_grad()
def export_model(model, fmt: str, output_dir: str | Path) -> tuple[Path, float]:
    """Write `model` in format `fmt` under `output_dir`; return (path, max abs logit difference vs PyTorch).

    A copy of the model is exported in fp32 on the CPU, in eval mode. Raises VitError if the difference exceeds
    TOLERANCE.
    """
    if fmt not in EXPORTERS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORTERS)}")
    output_dir = Path(output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create export folder {output_dir}: {e}") from e
    model = copy.deepcopy(model).float().cpu().eval()  # leave the caller's model on its device and dtype
    path = output_dir / FORMATS[fmt]
    export, run = EXPORTERS[fmt]
    with staged_files(output_dir, path.name) as staging:
        export(model, staging / path.name, random_input(model, EXAMPLE_BATCH))
        x = random_input(model, CHECK_BATCH, seed=1)
        diff = float((run(staging / path.name, x).float() - model(x)).abs().max())
        if not diff <= TOLERANCE:
            raise VitError(f"{fmt} export of {path} differs from PyTorch by {diff:.2e} > {TOLERANCE:.0e}")
    return path, diff
