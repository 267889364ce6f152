"""`python -m vit.convert` (vit/convert.py): a folder or a torchvision dataset written as WebDataset shards, a
save_to_disk folder or parquet files, read back by the libraries' own readers (webdataset's pipeline,
datasets.load_from_disk, pyarrow) and by `vit.data` (the folder's tensors); bad arguments exit 2.
"""

import json

import pytest
import torch

from vit import data
from vit import sources
from vit.convert import main

from conftest import folder_items

pytest.importorskip("webdataset")
datasets = pytest.importorskip("datasets")

MEMORY = dict(val_size=5, split_seed=3, data_mode="memory", img_size=8, channels=1)


def test_folder_to_shards_read_back_by_webdataset(same_images, tmp_path, capsys):
    """Every file's bytes and label, once, under its index as key, in shards of 10 written in a shuffled order;
    _info.json counts them; a second conversion writes byte-identical shards."""
    import webdataset as wds

    assert main([str(same_images.folder), str(tmp_path / "a"), "--to", "wds", "--shard-size", "10"]) == 0
    assert "--dataset wds:'" in capsys.readouterr().out
    items = folder_items(same_images.folder)
    info = json.loads((tmp_path / "a" / "_info.json").read_text())
    assert info["classes"] == list(same_images.classes)
    assert info["splits"]["train"]["shard_lengths"] == [10, 10, 4] and info["splits"]["train"]["num_samples"] == 24
    read = list(wds.WebDataset(str(tmp_path / "a" / "train-{000000..000002}.tar"), shardshuffle=False))
    assert sorted(s["__key__"] for s in read) == [f"{i:06d}" for i in range(24)]
    assert [s["__key__"] for s in read] != sorted(s["__key__"] for s in read)  # shuffled on writing
    for s in read:
        encoded, _, label, _ = items[int(s["__key__"])]
        assert s["png"] == encoded and int(s["cls"]) == label
    assert main([str(same_images.folder), str(tmp_path / "b"), "--to", "wds", "--shard-size", "10"]) == 0
    for name in ("train-000000.tar", "train-000002.tar"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


@pytest.mark.parametrize("fmt", ["hf", "parquet"])
def test_folder_to_hf_read_back_by_datasets(same_images, hf_cache, tmp_path, fmt):
    import pyarrow.parquet as pq

    assert main([str(same_images.folder), str(tmp_path / "out"), "--to", fmt, "--shard-size", "10"]) == 0
    items = folder_items(same_images.folder)
    if fmt == "hf":
        ds = datasets.load_from_disk(str(tmp_path / "out"))["train"]
        assert ds.features["label"].names == list(same_images.classes)
        rows = ds.cast_column("image", datasets.Image(decode=False))
        assert [r["image"]["bytes"] for r in rows] == [d for d, _, _, _ in items]
        assert rows["label"] == [y for _, _, y, _ in items]
    else:
        files = sorted((tmp_path / "out").glob("*.parquet"))
        assert [f.name for f in files] == [f"train-0000{k}-of-00003.parquet" for k in range(3)]
        table = pq.read_table(files[0])
        assert table.num_rows == 10 and [c["bytes"] for c in table.column("image").to_pylist()] == \
            [d for d, _, _, _ in items[:10]]
    for split in ("train", "val"):  # and the package reads it as the folder
        ref = data.load_builtin("folder", split, data_dir=str(same_images.folder), **MEMORY)
        got = sources.load_dataset(f"hf:{tmp_path / 'out'}", split, **MEMORY)
        assert got.classes == ref.classes
        assert torch.equal(got.images, ref.images) and torch.equal(got.labels, ref.labels)


def test_a_carved_val_split_matches_train_pys_carve(same_images, tmp_path):
    """--val-size writes train and val shards holding exactly train.py's carve of the folder (same seed): the
    streamed path can then validate on shards of its own."""
    assert main([str(same_images.folder), str(tmp_path / "s"), "--to", "wds", "--val-size", "5", "--split-seed",
                 "3"]) == 0
    info = json.loads((tmp_path / "s" / "_info.json").read_text())
    assert info["splits"]["val"]["num_samples"] == 5 and info["splits"]["train"]["num_samples"] == 19
    pattern = f"wds:{tmp_path / 's' / 'train-000000.tar'}"
    for split in ("train", "val"):
        ref = data.load_builtin("folder", split, data_dir=str(same_images.folder), **MEMORY)
        got = sources.load_dataset(pattern, split, **{**MEMORY, "val_size": 0.1})  # val: the val shards, not a carve
        assert torch.equal(got.images, ref.images) and torch.equal(got.labels, ref.labels), split


def test_torchvision_dataset_to_shards_and_hf(tiny_cifar10, hf_cache, tmp_path):
    """CIFAR-10 from torchvision's files: train and test splits, each image as lossless PNG that decodes to
    torchvision's pixels."""
    root, _ = tiny_cifar10
    # val: the official test set
    ref = {s: data.load_builtin("cifar10", s, data_dir=str(root)) for s in ("train", "val")}
    for fmt in ("wds", "hf"):
        assert main(["cifar10", str(tmp_path / fmt), "--to", fmt, "--data-dir", str(root)]) == 0
    pattern = f"wds:{tmp_path / 'wds' / 'train-000000.tar'}"
    for name in (pattern, f"hf:{tmp_path / 'hf'}"):
        for split, theirs in (("train", "train"), ("test", "val")):
            got = sources.load_dataset(name, split, data_mode="memory", img_size=32, val_split="test")
            assert got.classes == ref[theirs].classes
            assert torch.equal(got.images, ref[theirs].images) and torch.equal(got.labels, ref[theirs].labels)


def test_bad_arguments_exit_2(same_images, tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert main([str(same_images.folder), str(tmp_path / "full"), "--to", "wds"]) == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err
    assert main([str(tmp_path / "nothing"), str(tmp_path / "o"), "--to", "hf"]) == 2
    err = capsys.readouterr().err
    assert "error: source" in err and "neither a folder nor one of mnist" in err and not (tmp_path / "o").exists()
    with pytest.raises(SystemExit):
        main([str(same_images.folder), str(tmp_path / "o"), "--to", "zip"])


@pytest.mark.parametrize("flags, says", [(["--val-size", "nan"], "--val-size a finite number >= 0"),
                                         (["--val-size", "inf"], "--val-size a finite number >= 0"),
                                         (["--shuffle-seed", "-1"], "--shuffle-seed must be in [0, 2**63)"),
                                         (["--split-seed", str(2**63)], "--split-seed must be in [0, 2**63)")])
def test_flag_values_that_cannot_work_leave_nothing_behind(same_images, tmp_path, capsys, flags, says):
    """Refused when parsed, naming the flag: no traceback from numpy or torch half-way through, no empty output
    folder."""
    with pytest.raises(SystemExit) as e:
        main([str(same_images.folder), str(tmp_path / "out"), "--to", "wds", *flags])
    err = capsys.readouterr().err
    assert e.value.code == 2 and says in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
