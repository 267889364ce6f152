"""vit.convnet: the teacher convnet's FLOPs against torch's counter, its file round trip and refusals, and
train.py --teacher distilling from one."""

import json

import pytest
import torch
from safetensors.torch import save_file
from torch.utils.flop_counter import FlopCounterMode

import vit
from vit import data
from vit.convnet import ConvNet, TeacherSchedule, evaluate_convnet, forward_flops, load_convnet, save_convnet, \
    train_convnet
from vit.distill import load_teacher
from vit.errors import CheckpointError, ConfigError

from test_train import FAST, train_fails

DIGITS = vit.Preprocess((1, 8, 8), (0.5,), (0.5,), "bilinear", 1.0)


@pytest.mark.parametrize("widths, size, chans", [((8, 16, 16), 8, 1), ((16, 32, 64), 32, 3), ((4, 8), 28, 1)])
def test_flops_and_output_shape(widths, size, chans):
    model = ConvNet(widths=widths, num_classes=7, in_chans=chans).eval()
    with FlopCounterMode(display=False) as counter:
        out = model(torch.zeros(2, chans, size, size))
    assert out.shape == (2, 7)
    assert 2 * forward_flops(model, size) == counter.get_total_flops()


def test_widths_that_cannot_build_a_net_are_refused():
    for widths in [(), (1, 8)]:
        with pytest.raises(ConfigError, match="convnet widths"):
            ConvNet(widths=widths, num_classes=3)


def test_file_round_trip_gives_the_same_logits(tmp_path):
    model = ConvNet(widths=(8, 16), num_classes=3, in_chans=1)
    for m in model.modules():  # BatchNorm's running statistics travel too
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2)
    model.eval()
    path = save_convnet(model, tmp_path / "t.safetensors", preprocess=DIGITS, class_names=["a", "b", "c"])
    back = load_convnet(path)
    assert (back.widths, back.num_classes, back.in_chans) == ((8, 16), 3, 1)
    assert back.preprocess == DIGITS and back.class_names == ["a", "b", "c"] and not back.training
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x), rtol=0, atol=0)
    assert not list(tmp_path.glob("*.tmp*"))


def test_files_that_are_not_a_convnet_are_refused_by_name(tmp_path):
    model = ConvNet(widths=(8, 16), num_classes=3, in_chans=1)
    with pytest.raises(ConfigError, match="saved with its preprocessing"):
        save_convnet(model, tmp_path / "t.safetensors")
    with pytest.raises(ConfigError, match="2 class names for a convnet with 3 classes"):
        save_convnet(model, tmp_path / "t.safetensors", preprocess=DIGITS, class_names=["a", "b"])
    vit_file = vit.save_pretrained(vit.create_model("vit_nano_patch2_8", depth=1), tmp_path / "vit.safetensors")
    with pytest.raises(CheckpointError, match=r"vit.safetensors is not a convnet teacher's file"):
        load_convnet(vit_file)
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="junk.safetensors is not a readable safetensors file"):
        load_convnet(tmp_path / "junk.safetensors")
    good = save_convnet(model, tmp_path / "good.safetensors", preprocess=DIGITS)
    state = load_convnet(good).state_dict()
    meta = dict(format="vit-convnet", widths=json.dumps([8, 32]), num_classes="3", in_chans="1",
                preprocess=json.dumps(DIGITS.to_dict()))
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "wide.safetensors", metadata=meta)
    with pytest.raises(CheckpointError, match=r"wide.safetensors: its tensors do not fit a convnet of widths \(8, 3"):
        load_convnet(tmp_path / "wide.safetensors")
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "bare.safetensors",
              metadata=dict(format="vit-convnet"))
    with pytest.raises(CheckpointError, match="bare.safetensors: its convnet header is incomplete"):
        load_convnet(tmp_path / "bare.safetensors")


@pytest.fixture(scope="module")
def digits_teacher(tmp_path_factory):
    """A convnet trained for a few epochs on the digits split train.py trains on, saved as a teacher."""
    train, val = data.digits_split("train"), data.digits_split("val")
    normalize = data.Normalize(DIGITS.mean, DIGITS.std, channels=1, size=(8, 8), device="cpu")
    torch.manual_seed(0)
    net = ConvNet(widths=(16, 32), num_classes=10, in_chans=1)
    rows = train_convnet(net, train, val, normalize, TeacherSchedule(epochs=6, batch_size=64, lr=0.2, crop_pad=0,
                                                                     hflip=0.0), torch.device("cpu"), "fp32")
    path = save_convnet(net, tmp_path_factory.mktemp("teacher") / "convnet.safetensors", preprocess=DIGITS,
                        class_names=list(train.classes))
    return path, rows, val, normalize


def test_a_trained_convnet_learns_and_scores_the_same_from_its_file(digits_teacher):
    path, rows, val, normalize = digits_teacher
    assert [r["epoch"] for r in rows] == list(range(1, 7)) and rows[-1]["val_top1"] > 80.0, rows
    assert evaluate_convnet(load_convnet(path), val, normalize, "fp32", torch.device("cpu")) == rows[-1]["val_top1"]


def test_a_convnet_file_is_a_teacher(digits_teacher):
    """load_teacher: frozen, in evaluation mode, seeing the student's inputs in its own preprocessing."""
    path = digits_teacher[0]
    student = vit.create_model("vit_nano_patch2_8", depth=1, num_classes=10)
    student.class_names = [str(i) for i in range(10)]
    teacher, view = load_teacher(str(path), student, torch.device("cpu"))
    assert isinstance(teacher, ConvNet) and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    x = torch.randn(3, 1, 8, 8)  # the student's (0.3, 0.38) normalisation -> pixels -> the teacher's (0.5, 0.5)
    torch.testing.assert_close(view(x), (x * 0.38 + 0.3 - 0.5) / 0.5)
    student.class_names = [str(i) for i in reversed(range(10))]
    with pytest.raises(ConfigError, match="another order"):
        load_teacher(str(path), student, torch.device("cpu"))


def test_train_distils_from_a_convnet_file(digits_teacher, tmp_path, capsys):
    path = digits_teacher[0]
    out = tmp_path / "student"
    assert vit.train.main([*FAST, "--epochs", "1", "--distilled", "--teacher", str(path), "--output", str(out)]) == 0
    assert f"distilling from {path} (hard)" in capsys.readouterr().out
    assert (out / "best.safetensors").exists()
    five = save_convnet(ConvNet(widths=(8,), num_classes=5, in_chans=1), tmp_path / "five.safetensors",
                        preprocess=DIGITS)
    assert "predicts 5 classes, the student 10" in train_fails(capsys, "--teacher", five)
