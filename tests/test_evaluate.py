"""evaluate.py end to end on the run train.py trained in conftest (`trained_run`): the report against the model
and train.py's own validation, folders, predictions, export, hub checkpoints; then every bad input
(docs/troubleshooting.md's table), each ending in one line on stderr and exit code 2.

evaluate.py is driven through its `main(argv)` and `run(args)` in this process; tests/test_scripts.py runs
the script itself.
"""

import gc
import json
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

import vit
from vit.data import digits_split
from vit.evaluate import main as evaluate_main
from vit.evaluate import parse_args, run

from conftest import NANO, assert_no_code_ran, corrupt_jpeg, digit_folder, mixed_folder, unreadable_folder

REPORT_FIELDS = ("top1", "top5", "loss", "num_images", "per_class", "confusion_matrix", "ece", "images_per_second")


def evaluate(argv) -> dict:
    """evaluate.py's work without the exit: the report dict (main() returns an exit code)."""
    return run(parse_args(argv))


def evaluate_fails(capsys, *argv) -> str:
    """evaluate.py with `argv` must exit 2 with a message and no traceback; returns what it printed on stderr."""
    with pytest.raises(SystemExit) as e:
        evaluate_main([*map(str, argv), "--device", "cpu", "--no-progress", "--workers", "0"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def metrics_rows(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def run_dir(trained_run):
    return trained_run.out


def own_accuracy(model, images: torch.Tensor, labels: torch.Tensor) -> tuple[int, float]:
    """Correct count and mean cross-entropy, computed here without vit.evaluate or vit.metrics."""
    pre = model.preprocess
    mean, std = torch.tensor(pre.mean).view(1, -1, 1, 1), torch.tensor(pre.std).view(1, -1, 1, 1)
    with torch.no_grad():
        logits = model.eval()((images.float() / 255 - mean) / std)
    return int((logits.argmax(1) == labels).sum()), float(torch.nn.functional.cross_entropy(logits, labels))


def check_png(path, min_side=200, max_side=4000):
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        w, h = im.size
        assert min_side <= w <= max_side and min_side <= h <= max_side, (path, im.size)
        assert np.asarray(im.convert("L")).std() > 5  # not a blank canvas


def test_report_consistent_with_model(run_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    assert evaluate_main([str(run_dir / "best.safetensors"), "--dataset", "digits", "--output", str(out),
                          "--attention-maps", "3", "--batch-size", "100", "--precision", "fp32",
                          "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert all(k in report for k in REPORT_FIELDS)

    val = digits_split("val")  # the held-out split train.py validated on
    model = vit.create_model(pretrained=str(run_dir / "best.safetensors"))
    correct, loss = own_accuracy(model, val.images, val.labels)
    assert report["num_images"] == len(val) == 359
    assert round(report["top1"] * len(val)) == correct
    assert report["loss"] == pytest.approx(loss, rel=1e-5)
    # train.py's own validation of the best epoch saw the same images and the same weights.
    best = max(r["val_top1"] for r in metrics_rows(run_dir))
    assert 100 * report["top1"] == pytest.approx(best, abs=1e-9)

    cm = np.array(report["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == 359 and np.trace(cm) == correct
    assert sum(r["support"] for r in report["per_class"].values()) == 359
    assert report["top1"] <= report["top5"] <= 1 and 0 <= report["ece"] <= 1 and report["images_per_second"] > 0

    check_png(out / "confusion.png")
    check_png(out / "reliability.png")
    overlays = sorted((out / "attention").glob("*.png"))
    assert len(overlays) == 3
    for p in overlays:
        check_png(p)
    printed = capsys.readouterr().out
    assert "top-1" in printed and f"{100 * report['top1']:.2f} %" in printed


@pytest.mark.slow
def test_compiled_evaluation_reproduces_eager(run_dir, tmp_path):
    """--compile (inductor, frozen weights; the last batch is smaller and compiles again) gives the report
    of the eager model: same predictions, loss within fp32 rounding."""
    reports = [evaluate([str(run_dir / "best.safetensors"), "--dataset", "digits", "--batch-size", "128",
                         "--precision", "fp32", "--no-progress", "--output", str(tmp_path / name), *flags])
               for name, flags in (("eager", []), ("compiled", ["--compile"]))]
    eager, compiled = reports
    assert compiled["num_images"] == eager["num_images"] == 359  # 128 + 128 + 103
    assert compiled["confusion_matrix"] == eager["confusion_matrix"]
    assert compiled["loss"] == pytest.approx(eager["loss"], rel=1e-5)


def test_last_ckpt_and_run_folder(run_dir, tmp_path):
    """train.py's last.ckpt (a torch.save dict): config and class names from it, preprocessing by its model name.
    Without --dataset the run's own data is used; a run folder stands for its best.safetensors."""
    report = evaluate([str(run_dir / "last.ckpt"), "--output", str(tmp_path / "last"), "--precision", "fp32",
                       "--no-progress"])
    last = metrics_rows(run_dir)[-1]
    assert report["data"].startswith("digits (val)")
    assert 100 * report["top1"] == pytest.approx(last["val_top1"], abs=1e-9)
    assert report["loss"] == pytest.approx(last["val_loss"], rel=1e-5)
    best = evaluate([str(run_dir), "--output", str(tmp_path / "best"), "--precision", "fp32", "--no-progress"])
    assert best["checkpoint"] == str(run_dir) and best["data"].startswith("digits (val)")
    assert 100 * best["top1"] == pytest.approx(max(r["val_top1"] for r in metrics_rows(run_dir)), abs=1e-9)


def write_folder(root, images, labels, names):
    for i, (img, y) in enumerate(zip(images, labels)):
        (root / names[y]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[0].numpy()).save(root / names[y] / f"{i:04d}.png")


def test_image_folder_subset_of_classes(run_dir, tmp_path, capsys):
    """Class folders directly under ROOT, three of the ten classes: every image, labels mapped by name."""
    val = digits_split("val")
    keep = torch.isin(val.labels, torch.tensor([3, 5, 7]))
    images, labels = val.images[keep], val.labels[keep]
    write_folder(tmp_path / "digits", images, labels.tolist(), val.classes)
    report = evaluate([str(run_dir / "best.safetensors"), "--data-dir", str(tmp_path / "digits"),
                            "--output", str(tmp_path / "eval"), "--no-progress"])
    model = vit.create_model(pretrained=str(run_dir / "best.safetensors"))
    correct, _ = own_accuracy(model, images, labels)  # PNG keeps uint8 pixels exactly
    assert report["num_images"] == len(labels)
    assert round(report["top1"] * len(labels)) == correct
    supports = {name: r["support"] for name, r in report["per_class"].items() if r["support"]}
    assert supports == {"3": int((labels == 3).sum()), "5": int((labels == 5).sum()), "7": int((labels == 7).sum())}

    capsys.readouterr()
    files = sorted((tmp_path / "digits" / "7").glob("*.png"))[:2]
    result = evaluate([str(run_dir / "best.safetensors"), "--predict", *map(str, files), "--topk", "3"])
    printed = capsys.readouterr().out
    assert len(result["predictions"]) == 2 and len(result["predictions"][0]["top"]) == 3
    probs = [t["probability"] for t in result["predictions"][0]["top"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    assert str(files[0]) in printed and " %" in printed


def test_export_from_command_line(run_dir, tmp_path, capsys):
    report = evaluate([str(run_dir / "best.safetensors"), "--export", "exported-program",
                            "--output", str(tmp_path)])
    assert (tmp_path / "model.pt2").is_file() and report["export"]["max_abs_diff"] <= 1e-4
    assert "max abs difference" in capsys.readouterr().out


def test_own_preprocessing_for_large_images(tmp_path):
    """Weights whose preprocessing says resize by crop_pct + centre crop + bicubic (as ImageNet checkpoints do)
    are evaluated through exactly that, checked against torchvision's transforms built here."""
    from torchvision import transforms as T

    pre = vit.Preprocess((3, 80, 80), (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), "bicubic", 0.875)
    model = vit.VisionTransformer(img_size=80, patch_size=16, num_classes=3, embed_dim=32, depth=1, num_heads=2)
    model.preprocess = pre
    vit.save_pretrained(model, tmp_path / "w.safetensors", class_names=["a", "b", "c"])
    rng = np.random.default_rng(0)
    files, labels = [], []
    for i in range(9):
        name = "abc"[i % 3]
        (tmp_path / "data" / name).mkdir(parents=True, exist_ok=True)
        path = tmp_path / "data" / name / f"{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (100 + 7 * i, 130, 3), dtype=np.uint8)).save(path)
        files.append(path)
        labels.append(i % 3)
    report = evaluate([str(tmp_path / "w.safetensors"), "--data-dir", str(tmp_path / "data"), "--output",
                            str(tmp_path / "eval"), "--workers", "0", "--no-progress"])
    reference = T.Compose([T.Resize(int(80 / 0.875), interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(80),
                           T.ToTensor(), T.Normalize(pre.mean, pre.std)])
    x = torch.stack([reference(Image.open(f).convert("RGB")) for f in files])
    with torch.no_grad():
        logits = model.eval()(x)
    expected_loss = float(torch.nn.functional.cross_entropy(logits, torch.tensor(labels)))
    assert report["num_images"] == 9
    assert report["loss"] == pytest.approx(expected_loss, rel=1e-4)


def test_hub_checkpoints(tmp_path, monkeypatch, capsys):
    """A registered name and hf-hub:ORG/REPO, served from a local snapshot folder instead of the network:
    architecture, preprocessing and class names come from the snapshot's timm config.json."""
    import vit.weights
    from safetensors.torch import save_file
    from torchvision import transforms as T

    def snapshot(name, model, model_args, label_names):
        folder = tmp_path / name
        folder.mkdir()
        save_file(model.state_dict(), folder / "model.safetensors")  # as timm publishes: no metadata of ours
        (folder / "config.json").write_text(json.dumps({
            "architecture": "vit_tiny_patch16_224", "num_classes": model.num_classes, "model_args": model_args,
            "label_names": label_names,
            "pretrained_cfg": {"input_size": [3, *to_pair(model.config.img_size)], "mean": [0.5] * 3,
                               "std": [0.5] * 3, "interpolation": "bicubic", "crop_pct": 0.875}}))
        return folder / "model.safetensors"

    def to_pair(size):
        return [size, size] if isinstance(size, int) else list(size)

    small = vit.create_model("vit_tiny_patch16_224", depth=2, img_size=32, num_classes=3)
    full = vit.create_model("vit_tiny_patch16_224", num_classes=4)  # the registered architecture, 4 classes
    files = {"timm/small": snapshot("small", small, {"depth": 2, "img_size": 32}, ["ant", "bee", "cat"]),
             vit.get_entry("vit_tiny_patch16_224").hf_hub_id: snapshot("full", full, {}, list("abcd"))}
    monkeypatch.setattr(vit.weights, "download_from_hub", lambda repo_id, cache_dir=None: files[repo_id])
    image = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(image)

    # fp32: "auto" would pick bf16 for this width on a CPU with bf16 instructions (vit/precision.py).
    small_report = evaluate(["hf-hub:timm/small", "--predict", str(image), "--precision", "fp32"])
    top = small_report["predictions"][0]["top"]
    reference = T.Compose([T.Resize(int(32 / 0.875), interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(32),
                           T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)])  # the snapshot's pretrained_cfg
    with torch.no_grad():
        probs = small.eval()(reference(Image.open(image).convert("RGB"))[None]).softmax(1)[0]
    assert {t["class"]: t["probability"] for t in top} == pytest.approx(dict(zip(["ant", "bee", "cat"], probs.tolist())),
                                                                       abs=1e-5)
    full_report = evaluate(["vit_tiny_patch16_224", "--predict", str(image), "--topk", "2"])
    assert [t["class"] for t in full_report["predictions"][0]["top"]][0] in "abcd"
    assert "photo.jpg" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------------------
# Bad inputs: one line on stderr naming the file or the flag, exit code 2


@pytest.mark.parametrize("case, match", [
    ("truncated_safetensors", "is not a readable safetensors file"),
    ("truncated_pt", "is not a readable PyTorch checkpoint"),
    ("zero.pt", "is not a readable PyTorch checkpoint"),
    ("text", "is not a readable PyTorch checkpoint"),
    ("evil", "never unpickles arbitrary code"),
    ("evil_zip", "never unpickles arbitrary code"),
    ("other_arch", "pos_embed: expected shape (1, 17, 64), got (1, 17, 32)"),
])
def test_bad_checkpoints(weight_files, capsys, case, match):
    err = evaluate_fails(capsys, weight_files[case], "--model", NANO, "--dataset", "digits")
    assert match in err and str(weight_files[case]) in err
    assert_no_code_ran(weight_files)


def test_missing_checkpoint_no_config_unknown_model_or_nothing_to_do(weight_files, run_dir, capsys, tmp_path):
    err = evaluate_fails(capsys, tmp_path / "missing.safetensors", "--dataset", "digits")
    assert "no checkpoint at" in err and "missing.safetensors" in err
    err = evaluate_fails(capsys, weight_files["good_pt"], "--dataset", "digits")
    assert "carries no model config" in err and "--model" in err
    err = evaluate_fails(capsys, weight_files["good"], "--model", "vit_nano_patch3_8", "--dataset", "digits")
    assert "unknown model 'vit_nano_patch3_8'" in err
    alone = tmp_path / "alone.safetensors"  # no last.ckpt beside it to say what data it was trained on
    alone.write_bytes((run_dir / "best.safetensors").read_bytes())
    err = evaluate_fails(capsys, alone)
    assert "nothing to do" in err and "--dataset" in err


def test_weights_without_their_head_are_refused(weight_files, capsys, tmp_path):
    """A 10-class file with head.weight and head.bias taken out would be scored with a fresh random head (~10%)
    and exit 0: it is refused, naming the tensors it lacks."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    headless = tmp_path / "headless.safetensors"
    with safe_open(str(weight_files["good"]), framework="pt") as f:
        save_file({k: f.get_tensor(k) for k in f.keys() if not k.startswith("head.")}, str(headless),
                  metadata=f.metadata())
    err = evaluate_fails(capsys, headless, "--dataset", "digits")
    assert f"{headless}: its metadata describes a classifier of 10 classes, but it has no head.weight, head.bias" \
        in err


def test_a_bare_state_dict_without_the_models_head_is_refused(capsys, tmp_path):
    """Weights without a config, named with --model: a file lacking the head, or holding another class count's,
    would be scored with a fresh head; both are refused, naming the file and the tensors. With its head it loads."""
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in vit.create_model(NANO).state_dict().items()}
    cases = {"headless": {k: v for k, v in state.items() if not k.startswith("head.")},
             "other": {**state, "head.weight": torch.zeros(3, 64), "head.bias": torch.zeros(3)}}
    for name, tensors in cases.items():
        save_file(tensors, str(tmp_path / f"{name}.safetensors"))  # no metadata: a bare state dict
        err = evaluate_fails(capsys, tmp_path / f"{name}.safetensors", "--model", NANO, "--dataset", "digits")
        assert f"{tmp_path / name}.safetensors has " in err and "for a 10-class head" in err, err
    assert "has no head.weight, no head.bias" in evaluate_fails(capsys, tmp_path / "headless.safetensors", "--model",
                                                                NANO, "--dataset", "digits")
    save_file(state, str(tmp_path / "whole.safetensors"))
    report = evaluate([str(tmp_path / "whole.safetensors"), "--model", NANO, "--dataset", "digits", "--output",
                       str(tmp_path / "out"), "--device", "cpu", "--no-progress", "--workers", "0"])
    assert report["num_images"] == 359


def test_data_classes_differ_from_the_checkpoint(weight_files, capsys, tmp_path):
    root = digit_folder(tmp_path / "pets", classes=("cat", "dog"), per_class=2)
    err = evaluate_fails(capsys, weight_files["good"], "--data-dir", root, "--output", tmp_path / "out")
    assert "data classes ['cat', 'dog'] are not among the checkpoint's 10 classes" in err


@pytest.mark.parametrize("bad", ["corrupt.jpg", "zero.png"])
def test_unreadable_images(weight_files, capsys, caplog, tmp_path, bad):
    root = digit_folder(tmp_path / "data", per_class=3)
    path = root / "1" / bad
    corrupt_jpeg(path) if bad.endswith(".jpg") else path.write_bytes(b"")
    # Default --on-corrupt error: the error names the file.
    err = evaluate_fails(capsys, weight_files["good"], "--data-dir", root, "--output", tmp_path / "out")
    assert f"cannot read image {path}" in err
    # --on-corrupt skip: the documented, logged skip; the rest is evaluated.
    with caplog.at_level(logging.WARNING):
        evaluate_main([str(weight_files["good"]), "--data-dir", str(root), "--on-corrupt", "skip",
                       "--output", str(tmp_path / "out"), "--device", "cpu", "--no-progress", "--workers", "0"])
    assert "skipped 1 unreadable image(s)" in caplog.text and str(path) in caplog.text


def test_unreadable_image_in_a_worker(tmp_path, capsys):
    """An unreadable file met by a DataLoader worker: the message names it, without the worker's traceback."""
    model = vit.VisionTransformer(img_size=80, patch_size=16, num_classes=2, embed_dim=32, depth=1, num_heads=2)
    model.preprocess = vit.Preprocess((3, 80, 80), (0.5,) * 3, (0.5,) * 3, "bicubic", 0.875)
    vit.save_pretrained(model, tmp_path / "w.safetensors", class_names=["a", "b"])
    for name in "ab":
        (tmp_path / "data" / name).mkdir(parents=True)
        Image.new("RGB", (90, 90), "gray").save(tmp_path / "data" / name / "ok.png")
    (tmp_path / "data" / "b" / "torn.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    with pytest.raises(SystemExit) as e:
        evaluate_main([str(tmp_path / "w.safetensors"), "--data-dir", str(tmp_path / "data"), "--workers", "1",
                       "--output", str(tmp_path / "out"), "--no-progress"])
    message = capsys.readouterr().err
    assert e.value.code == 2 and "cannot read image" in message and "torn.jpg" in message
    assert "Traceback" not in message and "worker" not in message
    # The failed DataLoader (its worker persistent) is left to the garbage collector, whose shutdown of it
    # waits ~5 s for the worker: collected here, not in the middle of a later (perhaps timed) test.
    del e
    gc.collect()


def test_no_readable_image_at_all(weight_files, capsys, tmp_path):
    """Skipping every image would leave nothing to evaluate: an error, not an empty report."""
    root = unreadable_folder(tmp_path / "data")
    err = evaluate_fails(capsys, weight_files["good"], "--data-dir", root, "--on-corrupt", "skip",
                         "--output", tmp_path / "out")
    assert "no readable images among 6 files" in err


def test_predict_corrupt_image(weight_files, capsys, tmp_path):
    path = corrupt_jpeg(tmp_path / "photo.jpg")
    err = evaluate_fails(capsys, weight_files["good"], "--predict", path)
    assert f"cannot read image {path}" in err


def test_folder_layout_errors(weight_files, capsys, caplog, tmp_path):
    root = digit_folder(tmp_path / "data", per_class=2)
    (root / "1" / "README.txt").write_text("not an image")
    (root / "2").mkdir()
    err = evaluate_fails(capsys, weight_files["good"], "--data-dir", root)
    assert f"class folder {root / '2'} holds no images" in err
    (root / "2").rmdir()
    with caplog.at_level(logging.WARNING):  # a non-image file in a class folder: ignored, with a warning
        evaluate_main([str(weight_files["good"]), "--data-dir", str(root), "--output", str(tmp_path / "out"),
                       "--device", "cpu", "--no-progress", "--workers", "0"])
    assert "ignored 1 file(s) without an image extension" in caplog.text


def test_images_of_any_size_and_mode(weight_files, tmp_path):
    """Image size and channel count are evaluate.py's job, not the user's: RGB, grey and odd sizes are all
    converted to what the checkpoint expects (documented)."""
    root = mixed_folder(tmp_path / "data")
    evaluate_main([str(weight_files["good"]), "--data-dir", str(root), "--output", str(tmp_path / "eval"),
                   "--device", "cpu", "--no-progress", "--workers", "0"])
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["num_images"] == 16


def test_unwritable_output(weight_files, capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    err = evaluate_fails(capsys, weight_files["good"], "--dataset", "digits", "--output", blocker / "eval")
    assert f"cannot create output folder {blocker / 'eval'}" in err


def test_disk_full(weight_files, capsys, tiny_tmpfs):
    """A real full disk: an OutputError naming the file, and the previous report and pictures left whole."""
    out = tiny_tmpfs / "eval"
    assert evaluate_main([str(weight_files["good"]), "--dataset", "digits", "--output", str(out), "--device", "cpu",
                          "--no-progress"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(before) == ["confusion.png", "reliability.png", "report.json"]
    st = os.statvfs(tiny_tmpfs)
    (tiny_tmpfs / "filler").write_bytes(b"\0" * (st.f_bavail * st.f_frsize - 4096))
    err = evaluate_fails(capsys, weight_files["good"], "--dataset", "digits", "--output", out)
    assert f"cannot write {out / 'report.json'} (0.0 MB free there): No space left on device" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_read_only_output_is_refused_before_the_evaluation(weight_files, capsys, read_only_folder):
    """On a read-only filesystem: an OutputError naming the folder before the model is loaded or an image read,
    not the whole evaluation followed by an OSError from the clean-up of the first write."""
    for out, says in [(read_only_folder, f"cannot write to the output folder {read_only_folder}: Read-only file "
                                         "system"),
                      (read_only_folder / "eval", f"cannot create output folder {read_only_folder / 'eval'}")]:
        err = evaluate_fails(capsys, weight_files["good"], "--dataset", "digits", "--output", out)
        assert says in err and "evaluating" not in err


def test_a_refused_evaluation_leaves_no_output_folder(weight_files, capsys, tmp_path):
    out = tmp_path / "new" / "eval"
    err = evaluate_fails(capsys, weight_files["good"], "--data-dir", tmp_path / "no-data", "--output", out)
    assert "does not exist" in err and not (tmp_path / "new").exists()


def test_predict_on_a_fifo_is_refused_at_once(weight_files, capsys, tmp_path):
    from conftest import within

    fifo = tmp_path / "photo.png"
    os.mkfifo(fifo)
    with within(30):
        err = evaluate_fails(capsys, weight_files["good"], "--predict", fifo)
    assert f"cannot read image {fifo}: {fifo} is not a regular file" in err


@pytest.mark.parametrize("flag, value, says", [("--val-size", "nan", "--val-size must be a finite number >= 0"),
                                               ("--val-size", "inf", "--val-size must be a finite number >= 0"),
                                               ("--split-seed", "-1", "--split-seed must be in [0, 2**63)")])
def test_split_flags_that_cannot_work(weight_files, capsys, tmp_path, flag, value, says):
    err = evaluate_fails(capsys, weight_files["good"], "--dataset", "folder", "--data-dir", tmp_path,
                         flag, value, "--output", tmp_path / "out")
    assert says in err and not (tmp_path / "out").exists()


def test_predict_on_an_image_of_extreme_aspect_stays_small(tmp_path, capsys):
    """A 177-byte PNG of 2x50000 pixels through a 224-px model's preprocessing (resize to 256, centre crop): its
    centre is cut to a bounded ratio first, so the prediction runs within a memory limit the unbounded resize
    (256 x 6,400,000 x 3 floats) would break."""
    from test_fuzz import case_limits

    model = vit.VisionTransformer(img_size=224, patch_size=32, num_classes=2, embed_dim=16, depth=1, num_heads=2)
    model.preprocess = vit.Preprocess((3, 224, 224), (0.5,) * 3, (0.5,) * 3, "bicubic", 0.875)
    vit.save_pretrained(model, tmp_path / "w.safetensors", class_names=["a", "b"])
    Image.new("L", (2, 50000), 200).save(tmp_path / "tall.png")
    assert (tmp_path / "tall.png").stat().st_size < 1000
    with case_limits(seconds=60, memory=1024 * 2**20):
        evaluate_main([str(tmp_path / "w.safetensors"), "--predict", str(tmp_path / "tall.png"), "--device", "cpu"])
    assert "1. " in capsys.readouterr().out
