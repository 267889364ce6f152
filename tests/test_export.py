"""Exported models agree with PyTorch on a batch size other than the one they were traced with."""

import json
import os

import pytest

import vit
from vit.export import TOLERANCE, export_model


@pytest.fixture(scope="module")
def model():
    m = vit.create_model("vit_nano_patch2_8", depth=2)
    m.class_names = [str(i) for i in range(10)]
    return m.eval()


def test_onnx_parity(model, tmp_path):
    onnx = pytest.importorskip("onnx")
    path, diff = export_model(model, "onnx", tmp_path)
    assert diff <= TOLERANCE
    proto = onnx.load(str(path), load_external_data=False)
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # symbolic: any batch size
    meta = json.loads({p.key: p.value for p in proto.metadata_props}["vit"])
    assert meta["class_names"] == model.class_names and meta["config"]["depth"] == 2


@pytest.mark.parametrize("fmt", ["torchscript", "exported-program"])
def test_torch_formats_parity(model, fmt, tmp_path):
    path, diff = export_model(model, fmt, tmp_path)
    assert path.is_file() and diff <= TOLERANCE


def test_variant_parity(tmp_path):
    """Registers, no class token, average pooling, qk-norm and layer scale all survive export."""
    variant = vit.create_model("vit_nano_patch2_8", depth=2, reg_tokens=2, class_token=False, global_pool="avg",
                               qk_norm=True, init_values=1e-5)
    _, diff = export_model(variant, "exported-program", tmp_path)
    assert diff <= TOLERANCE


def test_unknown_format(model, tmp_path):
    with pytest.raises(vit.ConfigError, match="onnx"):
        export_model(model, "tflite", tmp_path)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "exported-program"])
def test_full_disk_keeps_the_previous_export(fmt, tiny_tmpfs):
    """On a real filesystem that fills up: an OutputError, the previous export untouched, nothing half-written
    left (torch's own zip writer would abort the process here, leaving a torn file)."""
    if fmt == "onnx":
        pytest.importorskip("onnx")
    path, _ = export_model(vit.create_model("vit_nano_patch2_8", depth=1), fmt, tiny_tmpfs)
    before = {p.name: p.read_bytes() for p in tiny_tmpfs.iterdir()}  # ONNX: model.onnx and model.onnx.data
    st = os.statvfs(tiny_tmpfs)
    (tiny_tmpfs / "filler").write_bytes(b"\0" * (st.f_bavail * st.f_frsize - sum(map(len, before.values())) // 2))
    with pytest.raises(vit.OutputError, match=rf"cannot write {path} \(.* MB free there\)"):
        export_model(vit.create_model("vit_nano_patch2_8", depth=1), fmt, tiny_tmpfs)
    assert {p.name: p.read_bytes() for p in tiny_tmpfs.iterdir() if p.name != "filler"} == before
