"""vit.distill: DeiT's loss against a hand computation, which head learns from what, the teacher's view of
the student's inputs, train.py --teacher end to end on digits with a teacher trained there first, and a run
that trains its own convnet teacher first (--teacher-widths): its resume, its minutes in the budget, its flags."""

import math

import pytest
import torch
import torch.nn as nn

import vit
from vit import data
from vit import train
from vit import runs
from vit.convnet import ConvNet, TeacherSchedule, load_convnet, save_convnet
from vit.distill import DistillationLoss, TeacherView

from conftest import make_folder, make_idx_dir
from test_train import FAST, assert_same_weights, ckpt, ladder_recipe, rows, stopped_and_resumed, train_fails


class LinearTeacher(nn.Module):
    """A fixed map from images to logits: any teacher will do for the loss."""

    def __init__(self, in_features, classes, seed=0):
        super().__init__()
        self.w = torch.randn(in_features, classes, generator=torch.Generator().manual_seed(seed))

    def forward(self, x):
        return x.flatten(1) @ self.w


def hand_loss(cls, dist, teacher, y, kind, alpha, tau, smoothing):
    """DeiT's loss from its definitions, one image and one class at a time, in float64."""
    B, K = cls.shape
    cls, dist, teacher = cls.double(), dist.double(), teacher.double()

    def log_softmax(row, T=1.0):
        z = [v / T for v in row.tolist()]
        m = max(z)
        lse = m + math.log(sum(math.exp(v - m) for v in z))
        return [v - lse for v in z]

    base = 0.0
    for b in range(B):
        lp = log_softmax(cls[b])
        base += (1 - smoothing) * -lp[y[b]] + smoothing * sum(-v for v in lp) / K
    base /= B
    if kind == "hard":
        kd = sum(-log_softmax(dist[b])[int(teacher[b].argmax())] for b in range(B)) / B
    else:  # tau^2 * sum of p_t (log p_t - log p_s) over every image and class, / (B * K)
        kd = 0.0
        for b in range(B):
            ls, lt = log_softmax(dist[b], tau), log_softmax(teacher[b], tau)
            kd += sum(math.exp(t) * (t - s) for s, t in zip(ls, lt))
        kd = kd * tau * tau / (B * K)
    return (1 - alpha) * base + alpha * kd


@pytest.mark.parametrize("kind, alpha, tau", [("hard", 0.5, 1.0), ("soft", 0.5, 1.0), ("soft", 0.3, 3.0)])
@pytest.mark.parametrize("student_distilled", [True, False])
def test_loss_equals_hand_computation(kind, alpha, tau, student_distilled):
    """A distilled student's (cls, dist) logits, or one [CLS] head's logits for both terms."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(6, 1, 8, 8, generator=g), torch.randint(0, 10, (6,), generator=g)
    cls = torch.randn(6, 10, generator=g)
    dist = torch.randn(6, 10, generator=g) if student_distilled else cls
    teacher = LinearTeacher(64, 10)
    pre = vit.Preprocess((1, 8, 8), (0.5,), (0.5,), "bilinear", 1.0)
    loss_fn = DistillationLoss(nn.CrossEntropyLoss(label_smoothing=0.1), teacher, TeacherView(pre, pre), kind, alpha, tau)
    got = loss_fn((cls, dist) if student_distilled else cls, y, x)
    want = hand_loss(cls, dist, teacher(x), y.tolist(), kind, alpha, tau, 0.1)
    assert got.item() == pytest.approx(want, rel=1e-6, abs=1e-7)


@pytest.mark.parametrize("alpha, learns, stays", [(1.0, "head_dist", "head"), (0.0, "head", "head_dist")])
def test_labels_reach_the_cls_head_and_the_teacher_the_distillation_head(alpha, learns, stays):
    student = vit.create_model("vit_nano_patch2_8", depth=1, distilled=True).train()
    student.set_distilled_training()
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
    view = TeacherView(student.preprocess, student.preprocess)
    loss_fn = DistillationLoss(nn.CrossEntropyLoss(), LinearTeacher(64, 10), view, "hard", alpha)
    loss_fn(student(x), y, x).backward()
    assert getattr(student, learns).weight.grad.abs().sum() > 0
    stays_grad = getattr(student, stays).weight.grad
    assert stays_grad is None or not stays_grad.any()


def test_teacher_view_is_the_teachers_own_preprocessing():
    """Grey 8x8 digits normalised for the student, seen by an RGB 16x16 teacher with other statistics: what
    the teacher's own normalisation (vit.data.Normalize, grey expanded, resized) makes of the same pixels."""
    pixels = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    student = vit.Preprocess((1, 8, 8), (0.3,), (0.38,), "bilinear", 1.0)
    teacher = vit.Preprocess((3, 16, 16), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bicubic", 1.0)
    cpu = torch.device("cpu")
    as_student = data.Normalize(student.mean, student.std, channels=1, size=(8, 8), device=cpu)
    as_teacher = data.Normalize(teacher.mean, teacher.std, channels=3, size=(16, 16), device=cpu)
    seen = TeacherView(student, teacher)(as_student(pixels))
    torch.testing.assert_close(seen, as_teacher(pixels), rtol=0, atol=1e-5)
    same = torch.randn(2, 1, 8, 8)
    assert TeacherView(student, student)(same) is same


def test_distilling_from_a_teacher_trained_on_digits(trained_run, tmp_path, capsys):
    """The mechanics end to end: the teacher train.py trained on digits, a distilled student trained from it
    (hard), the student's best.safetensors a distilled model of its own, without the teacher's weights."""
    teacher = trained_run.out / "best.safetensors"
    out = tmp_path / "student"
    assert train.main([*FAST, "--epochs", "1", "--lr", "4e-3", "--distilled", "--teacher", str(teacher),
                       "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"distilling from {teacher} (hard)" in printed
    assert len(rows(out)) == 1 and all(r["images_per_s"] > 0 for r in rows(out))
    assert set(ckpt(out)["model"]) == set(vit.create_model("vit_nano_patch2_8", distilled=True).state_dict())
    student = vit.create_model(pretrained=out / "best.safetensors").eval()
    assert student.config.distilled and not student.distilled_training
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():  # evaluation: the mean of the two heads
        tokens = student.forward_features(x)
        torch.testing.assert_close(student(x), (student.head(tokens[:, 0]) + student.head_dist(tokens[:, 1])) / 2)


def test_distillation_flags_that_do_not_fit(trained_run, tmp_path, capsys):
    teacher = str(trained_run.out / "best.safetensors")
    assert "--distill needs --teacher" in train_fails(capsys, "--distill", "soft")
    assert "--teacher-pretrained needs --teacher" in train_fails(capsys, "--teacher-pretrained")
    assert "neither a file, a folder nor hf-hub" in train_fails(capsys, "--teacher", tmp_path / "missing.safetensors")
    five = vit.save_pretrained(vit.create_model("vit_nano_patch2_8", depth=1, num_classes=5), tmp_path / "five.safetensors")
    assert "predicts 5 classes, the student 10" in train_fails(capsys, "--teacher", five)
    assert "--distill-tau must be > 0" in train_fails(capsys, "--teacher", teacher, "--distill-tau", "0")


def test_a_teacher_for_other_classes_is_refused_by_name(trained_run, tmp_path, capsys):
    """The teacher's output i must be the student's class i: a teacher of as many classes under other names, or
    the same names in another order, is a ConfigError naming them; one without names is taken at its count."""
    from vit.distill import check_same_classes

    model = vit.create_model(pretrained=trained_run.out / "best.safetensors")  # digits: classes "0" to "9"
    other = vit.save_pretrained(model, tmp_path / "other.safetensors", class_names=list("abcdefghij"))
    assert "was trained on other classes than the student's: a, b, c, d, e, f, g, h, i, j are not among the " \
           "student's (0, 1, 2" in train_fails(capsys, "--teacher", other)
    shuffled = vit.save_pretrained(model, tmp_path / "shuffled.safetensors", class_names=list("1032547698"))
    assert "names the student's classes in another order" in train_fails(capsys, "--teacher", shuffled)
    check_same_classes("t", None, list("ab"))
    check_same_classes("t", list("ab"), list("ab"))


def test_a_run_trains_its_convnet_teacher_first_and_resumes_exactly_with_it(tmp_path, capsys):
    """--teacher-widths: the run trains the convnet on its training split, keeps it in the run folder with its
    schedule, classes and preprocessing, and distils from it; stopped and resumed, it reads the teacher back instead
    of training it again and ends with the weights of the run that was never stopped, whose teacher is the same."""
    args = [*FAST, "--epochs", "2", "--teacher-widths", "16,32", "--teacher-epochs", "3", "--distilled"]
    stopped = stopped_and_resumed(args, tmp_path / "stopped", 25)  # digits: 22 steps of 64 an epoch
    printed = capsys.readouterr().out
    assert printed.count("teacher: training a convnet 16,32") == 1
    assert "teacher: the convnet 16,32 trained earlier in this run" in printed
    assert f"distilling from the convnet 16,32 trained first ({tmp_path / 'stopped' / runs.TEACHER}) (hard)" in printed
    assert train.main(args + ["--output", str(tmp_path / "whole")]) == 0
    assert_same_weights(stopped, ckpt(tmp_path / "whole"), 44)
    files = [tmp_path / run / runs.TEACHER for run in ("stopped", "whole")]
    teacher, again = load_convnet(files[0]), load_convnet(files[1])
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in teacher.state_dict().items())
    assert teacher.widths == (16, 32) and teacher.schedule == TeacherSchedule(epochs=3, seed=0)
    assert teacher.class_names == [str(i) for i in range(10)] and teacher.preprocess.input_size == (1, 8, 8)
    assert teacher.preprocess.mean == vit.create_model("vit_nano_patch2_8").preprocess.mean
    # resumed into another folder, the run takes its teacher along instead of training another
    assert train.main(args + ["--output", str(tmp_path / "first"), "--max-steps", "25"]) == 0
    capsys.readouterr()
    assert train.main(["--resume", str(tmp_path / "first"), "--output", str(tmp_path / "moved"), "--max-steps", "0"]) == 0
    assert "teacher: the convnet 16,32 trained earlier in this run" in capsys.readouterr().out
    assert_same_weights(stopped, ckpt(tmp_path / "moved"), 44)


def test_a_budget_prices_a_rungs_teacher_before_choosing_it(tmp_path, capsys, monkeypatch):
    """A rung whose fields train a teacher first is chosen only where its minimum epochs fit what the teacher
    leaves: with a cheap teacher the larger rung trains, after its teacher; where the teacher would take 19 of the
    budget's 20 minutes, the smaller rung, which has none, trains and no teacher is trained (the runs stop once
    planned: --plan-only)."""
    from vit.teacher import TeacherCost

    make_idx_dir(tmp_path / "idx", n_train=400, n_test=20)
    args = FAST + ["--data-dir", str(tmp_path / "idx"), "--batch-size", "8", "--plan-only"]
    recipe = ladder_recipe(monkeypatch, ("vit_slim_patch7_28", 0, 1000),
                           ("vit_micro_patch7_28", 100, 1000, dict(teacher_widths="8,16", teacher_epochs=2,
                                                                    teacher_share=0.95)), budget="20m")
    assert train.main(args + ["--recipe", recipe, "--output", str(tmp_path / "cheap")]) == 0
    printed = capsys.readouterr().out
    assert "teacher: training a convnet 8,16" in printed and "for 2 epochs" in printed
    assert "training vit_micro_patch7_28" in printed
    assert (tmp_path / "cheap" / runs.TEACHER).is_file()

    monkeypatch.setattr(TeacherCost, "_time", lambda self, cfg: (570.0, 0.0))  # 2 epochs: 19 minutes
    assert train.main(args + ["--recipe", recipe, "--output", str(tmp_path / "dear")]) == 0
    printed = capsys.readouterr().out
    assert "training vit_slim_patch7_28" in printed and "teacher:" not in printed
    assert not (tmp_path / "dear" / runs.TEACHER).exists()


def test_a_teachers_epochs_are_what_fits_its_share_of_the_budget(monkeypatch):
    from vit.recipes import TrainConfig
    from vit.teacher import TeacherCost

    monkeypatch.setattr(TeacherCost, "_time", lambda self, cfg: (20.0, 0.001))
    cost = TeacherCost(None, torch.device("cpu"))
    config = dict(teacher_widths="8,16", teacher_epochs=10, batch_size=100)
    assert cost.epochs(TrainConfig(**config)) == 10  # no budget: as given
    assert cost.epochs(TrainConfig(**config, budget="10m")) == 4  # 0.15 x 600 s = 90 s: 4 epochs of 20 s
    assert cost.cost(TrainConfig(**config, budget="10m")) == (80.0, pytest.approx(0.1))
    assert cost.epochs(TrainConfig(**config, budget="1h")) == 10  # 27 fit: at most --teacher-epochs
    assert cost.epochs(TrainConfig(**config, budget="1m")) == 1  # none fits: one all the same
    assert cost.cost(TrainConfig(batch_size=100, budget="1m")) == (0.0, 0.0)


def test_teacher_flags_that_do_not_fit(tmp_path, capsys):
    assert "comma-separated block widths of at least 2" in train_fails(capsys, "--teacher-widths", "16,x")
    assert "comma-separated block widths of at least 2" in train_fails(capsys, "--teacher-widths", "16,1")
    assert "a run distils from one teacher" in train_fails(capsys, "--teacher-widths", "16", "--teacher",
                                                           tmp_path / "t.safetensors")
    assert "--teacher-epochs must be >= 1" in train_fails(capsys, "--teacher-widths", "16", "--teacher-epochs", "0")
    assert "--distill needs --teacher SOURCE or --teacher-widths" in train_fails(capsys, "--distill", "hard")
    folder = make_folder(tmp_path / "tree", per_class=4, size=8, mode="L")
    assert "trains its convnet on images held in memory" in train_fails(
        capsys, "--dataset", "folder", "--data-dir", folder, "--data-mode", "loader", "--val-size", "3",
        "--teacher-widths", "16", "--output", tmp_path / "out")


def test_a_teacher_given_replaces_the_rungs_own(tmp_path, capsys, monkeypatch):
    """A rung that trains its own teacher distils from the one given on the command line instead (--plan-only)."""
    make_idx_dir(tmp_path / "idx", n_train=40, n_test=20)
    teacher = save_convnet(ConvNet(widths=(8,), num_classes=10, in_chans=1), tmp_path / "t.safetensors",
                           preprocess=vit.Preprocess((1, 28, 28), (0.5,), (0.5,), "bilinear", 1.0))
    recipe = ladder_recipe(monkeypatch, ("vit_slim_patch7_28", 0, 1000, dict(teacher_widths="8,16")), budget="20m")
    assert train.main(FAST + ["--data-dir", str(tmp_path / "idx"), "--batch-size", "8", "--plan-only", "--recipe",
                              recipe, "--teacher", str(teacher), "--output", str(tmp_path / "run")]) == 0
    printed = capsys.readouterr().out
    assert f"distilling from {teacher} (hard)" in printed and "teacher: training" not in printed
