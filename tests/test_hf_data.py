"""`--dataset hf:NAME` (vit/hf_data.py): a save_to_disk folder, parquet files and a hub name from the datasets
cache (offline) give the folder's tensors; rows for DataLoader workers; every bad input a DataError naming it;
and one training run through folder, WebDataset and HF that ends bit-identical.

The HF data is made by `datasets` itself (`Dataset.from_dict` with a ClassLabel, `save_to_disk`, `to_parquet`,
the parquet builder's cache) from the same image files as the folder (conftest.same_images).
"""

import os
import re
import shutil

import pytest
import torch

from vit import data
from vit import sources
from vit import train
from vit.errors import ConfigError, DataError

from conftest import folder_items, hf_dataset_of

datasets = pytest.importorskip("datasets")

MEMORY = dict(val_size=5, split_seed=3, data_mode="memory", img_size=8, channels=1)


def folder(split, **kw):
    return data.load_builtin("folder", split, data_dir=str(kw.pop("root")), **{**MEMORY, **kw})


def hub_cache(cache, parquet, repo="org/tiny", splits=("train",)):
    """The datasets cache as loading `repo` from the hub leaves it: the parquet builder's Arrow files under
    CACHE/org___tiny/default/0.0.0/HASH (built here from local files, then put where the hub's would be)."""
    from datasets.packaged_modules.parquet.parquet import Parquet

    files = datasets.data_files.DataFilesDict.from_patterns({s: [str(parquet)] for s in splits})
    builder = Parquet(cache_dir=str(cache.parent / "build"), dataset_name=repo.split("/")[1], config_name="default",
                      data_files=files, hash="0123abcd")
    builder.download_and_prepare()
    built = next((cache.parent / "build" / repo.split("/")[1]).iterdir())  # default-<config id>
    target = cache / repo.replace("/", "___") / "default"
    target.parent.mkdir(parents=True)
    shutil.move(str(built), str(target))


@pytest.mark.parametrize("source", ["hf_disk", "parquet", "parquet_dir", "hub"])
def test_hf_sources_decode_to_the_folders_tensors(same_images, hf_cache, tmp_path, source):
    """Every way of naming an HF dataset gives, split for split, the same uint8 tensors, labels and class names
    as the folder of the same files (the carve by --val-size/--split-seed included)."""
    name = {"hf_disk": str(same_images.hf_disk), "parquet": str(same_images.parquet)}.get(source)
    if source == "parquet_dir":  # a folder of {split}-NNNNN-of-NNNNN.parquet: datasets names the split
        (tmp_path / "pq").mkdir()
        shutil.copy(same_images.parquet, tmp_path / "pq" / "train-00000-of-00001.parquet")
        name = str(tmp_path / "pq")
    if source == "hub":
        hub_cache(hf_cache, same_images.parquet)
        name = "org/tiny"
    for split in ("train", "val"):
        ref = folder(split, root=same_images.folder)
        got = sources.load_dataset(f"hf:{name}", split, **MEMORY)
        assert got.classes == ref.classes == list(same_images.classes)
        assert torch.equal(got.images, ref.images) and torch.equal(got.labels, ref.labels), split


def test_an_unreachable_hub_is_asked_once_then_the_cache_is_read(same_images, hf_cache, monkeypatch):
    """Not offline, but the hub gives no answer: one request (no retries), then datasets reads its cache alone,
    without huggingface_hub's ~25 s of retries for each split; offline mode is put back after."""
    import huggingface_hub

    hub_cache(hf_cache, same_images.parquet)
    asked = []

    def no_answer(url, **kw):
        asked.append(url)
        raise ConnectionError("no route to host")

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", no_answer)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    ref = folder("val", root=same_images.folder)
    assert torch.equal(sources.load_dataset("hf:org/tiny", "val", **MEMORY).images, ref.images)
    with pytest.raises(DataError, match="hf:org/absent: cannot reach the Hugging Face hub"):
        sources.load_dataset("hf:org/absent", "train", **MEMORY)
    assert len(asked) == 2 and "datasets/org/tiny" in asked[0] and datasets.config.HF_HUB_OFFLINE is False


def test_validation_split_is_used_and_named(same_images, tmp_path):
    """A split called validation is "val" (train is then whole); --val-split names another."""
    items = folder_items(same_images.folder)
    dd = datasets.DatasetDict({"train": hf_dataset_of(items[:16], same_images.classes),
                               "validation": hf_dataset_of(items[16:20], same_images.classes),
                               "holdout": hf_dataset_of(items[20:], same_images.classes)})
    dd.save_to_disk(str(tmp_path / "dd"))
    name = f"hf:{tmp_path / 'dd'}"
    # the folder's order: items'
    every = data.decode_folder(data.scan_image_folder(same_images.folder), size=8, channels=1)
    for split, val_split, rows in [("train", "", slice(0, 16)), ("val", "", slice(16, 20)),
                                   ("test", "", slice(16, 20)),  # no test split: val
                                   ("val", "holdout", slice(20, None))]:
        got = sources.load_dataset(name, split, **MEMORY, val_split=val_split)
        assert torch.equal(got.images, every.images[rows]) and torch.equal(got.labels, every.labels[rows]), split


def test_rows_for_dataloader_workers_match_the_folder_loader(same_images):
    """data_mode loader: Arrow rows by index through the folder path's sampler and workers: the same batches
    (timm's random transforms, seeded per sample) as the folder's files, with 2 workers against 0."""
    from timm.data import create_transform

    transform = create_transform(8, is_training=True, hflip=0.5, mean=(0.5,), std=(0.5,))
    kw = dict(val_size=5, split_seed=3, data_mode="loader")
    rows = sources.load_dataset(f"hf:{same_images.hf_disk}", "train", **kw)
    files = data.load_builtin("folder", "train", data_dir=str(same_images.folder), **kw)
    assert type(rows).__name__ == "ArrowRows" and len(rows) == len(files)

    def batches(split, workers):
        loader, sampler = data.train_loader(split, transform, channels=1, on_corrupt="error", batch_size=6,
                                            workers=workers, seed=0, rank=0, world=1, pin_memory=False)
        sampler.set_epoch(1)
        return [(x, y) for x, y, _ in loader]

    ours, ref = batches(rows, 2), batches(files, 0)
    assert len(ours) == len(ref) == len(files) // 6
    for (x, y), (rx, ry) in zip(ours, ref):
        assert torch.equal(x, rx) and torch.equal(y, ry)


def test_bad_hf_inputs_name_what_is_wrong(same_images, hf_cache, tmp_path):
    name = f"hf:{same_images.hf_disk}"
    with pytest.raises(DataError, match="no column 'pixels' .*--image-key.*columns: image, label"):
        sources.load_dataset(name, "train", **MEMORY, image_key="pixels")
    with pytest.raises(DataError, match="no column 'target' .*--label-key"):
        sources.load_dataset(name, "train", **MEMORY, label_key="target")
    with pytest.raises(DataError, match=r"no split 'validaton' \(--val-split\); splits: train"):
        sources.load_dataset(name, "val", **MEMORY, val_split="validaton")
    with pytest.raises(DataError, match="hf:org/absent: cannot reach the Hugging Face hub .*not in the datasets cache"):
        sources.load_dataset("hf:org/absent", "train", **MEMORY)
    with pytest.raises(DataError, match="no such file or folder"):
        sources.load_dataset(f"hf:{tmp_path / 'nothing' / 'here'}", "train", **MEMORY)
    # A column without images, a split without labels (the hub's test splits hold -1)
    items = folder_items(same_images.folder)
    no_image = datasets.Dataset.from_dict({"text": ["a"] * 4, "label": [0, 1, 0, 1]})
    no_image.save_to_disk(str(tmp_path / "text"))
    with pytest.raises(DataError, match="has no image column .*--image-key; columns: text"):
        sources.load_dataset(f"hf:{tmp_path / 'text'}", "train", **MEMORY)
    unlabelled = hf_dataset_of(items, same_images.classes).cast_column("label", datasets.Value("int64"))
    unlabelled = unlabelled.map(lambda r, i: {"label": -1 if i == 3 else r["label"]}, with_indices=True)
    unlabelled.save_to_disk(str(tmp_path / "unlabelled"))
    with pytest.raises(DataError, match=r"split train: 1 row\(s\) without a label in column 'label'"):
        sources.load_dataset(f"hf:{tmp_path / 'unlabelled'}", "train", **MEMORY)


def test_flags_for_hf_and_wds_only(same_images):
    with pytest.raises(ConfigError, match="--data-dir has no effect with --dataset hf:"):
        sources.load_dataset(f"hf:{same_images.hf_disk}", "train", data_dir="x", **MEMORY)
    with pytest.raises(ConfigError, match="are for hf: and wds: datasets, not digits"):
        sources.load_dataset("digits", "train", label_key="label")
    with pytest.raises(ConfigError, match="unknown dataset 'hf:'"):
        sources.check_dataset("hf:")


def test_folder_shards_and_hf_train_bit_identical(same_images, hf_cache, tmp_path, capsys):
    """The same images through the folder, WebDataset shards, a save_to_disk folder and parquet: the same seed
    gives bit-identical weights after a few deterministic CPU steps, and the same validation accuracy."""
    common = ["--quiet", "--device", "cpu", "--precision", "fp32", "--deterministic", "--model", "vit_nano_patch2_8",
              "--img-size", "8", "--batch-size", "4", "--val-size", "5", "--split-seed", "3", "--epochs", "2",
              "--max-steps", "6", "--warmup-epochs", "0", "--hflip", "0.5", "--crop-pad", "1", "--seed", "5"]
    dataset_flags = {"folder": ["--dataset", "folder", "--data-dir", str(same_images.folder)],
                     "wds": ["--dataset", f"wds:{same_images.shards}"],
                     "hf": ["--dataset", f"hf:{same_images.hf_disk}"],
                     "parquet": ["--dataset", f"hf:{same_images.parquet}"]}
    weights = {}
    for name, flags in dataset_flags.items():
        assert train.main(common + flags + ["--output", str(tmp_path / name)]) == 0, capsys.readouterr().err
        weights[name] = torch.load(tmp_path / name / "last.ckpt", map_location="cpu", weights_only=True)["model"]
    assert "19 train / 5 val images, 3 classes" in capsys.readouterr().out
    for name in ("wds", "hf", "parquet"):
        for k, v in weights["folder"].items():
            assert torch.equal(v, weights[name][k]), (name, k)
    # Teeth: another seed moves the weights
    assert train.main(common + dataset_flags["folder"] + ["--seed", "6", "--output", str(tmp_path / "other")]) == 0
    other = torch.load(tmp_path / "other" / "last.ckpt", map_location="cpu", weights_only=True)["model"]
    assert not torch.equal(other["head.weight"], weights["folder"]["head.weight"])


def test_evaluate_reads_hf_rows_and_streamed_shards_as_the_folder(same_images, tmp_path):
    """evaluate.py on a model of 80 px (so through DataLoader workers and the checkpoint's preprocessing):
    hf: rows and streamed wds: shards give the folder's confusion matrix, with labels mapped to the
    checkpoint's class order by name."""
    import vit
    from vit.evaluate import parse_args, run

    model = vit.create_model("vit_tiny_patch16_224", img_size=80, depth=1, num_classes=3)
    weights = vit.save_pretrained(model, tmp_path / "m.safetensors", class_names=["emu", "cat", "dog"])
    common = [str(weights), "--device", "cpu", "--precision", "fp32", "--workers", "0", "--no-progress",
              "--val-size", "5", "--split-seed", "3"]
    reports = {}
    for name, flags in {"folder": ["--dataset", "folder", "--data-dir", str(same_images.folder)],
                        "hf": ["--dataset", f"hf:{same_images.hf_disk}"],
                        "wds": ["--dataset", f"wds:{same_images.shards}", "--val-split", same_images.shards]}.items():
        reports[name] = run(parse_args(common + flags + ["--output", str(tmp_path / name)]))
    assert sum(map(sum, reports["folder"]["confusion_matrix"])) == 5
    assert sum(map(sum, reports["wds"]["confusion_matrix"])) == 24  # the validation shards: all of them here
    assert reports["hf"]["confusion_matrix"] == reports["folder"]["confusion_matrix"]
    assert reports["hf"]["class_names"] == ["emu", "cat", "dog"]
    folder_all = run(parse_args([str(weights), "--device", "cpu", "--precision", "fp32", "--no-progress",
                                 "--data-dir", str(same_images.folder), "--output", str(tmp_path / "all")]))
    assert reports["wds"]["confusion_matrix"] == folder_all["confusion_matrix"]


# --------------------------------------------------------------------------------------------------------
# Hostile datasets: labels, class orders, cell sizes and paths


def test_an_integer_label_column_is_bounded_before_its_class_list_is_made(same_images, tmp_path, monkeypatch):
    """One row labelled 5*10^7 in a column without names: a DataError naming VIT_MAX_CLASSES at once, not a list
    of 5*10^7 class names; where the limit is raised past the largest label, the column is read."""
    import time

    items = folder_items(same_images.folder)[:4]
    ints = hf_dataset_of(items, same_images.classes).cast_column("label", datasets.Value("int64"))
    for top in (5 * 10**7, 20):
        ints.map(lambda r, i: {"label": top if i == 2 else r["label"]}, with_indices=True).save_to_disk(
            str(tmp_path / str(top)))
    start = time.perf_counter()
    with pytest.raises(DataError, match=r"split train, column 'label': labels up to 50,000,000 make 50,000,001 "
                                        r"classes, over the limit of 100,000 .*VIT_MAX_CLASSES"):
        sources.load_dataset(f"hf:{tmp_path / str(5 * 10**7)}", "train", data_mode="loader", val_size=1)
    assert time.perf_counter() - start < 5
    monkeypatch.setenv("VIT_MAX_CLASSES", "20")
    with pytest.raises(DataError, match="labels up to 20 make 21 classes, over the limit of 20"):
        sources.load_dataset(f"hf:{tmp_path / '20'}", "train", data_mode="loader", val_size=1)
    monkeypatch.setenv("VIT_MAX_CLASSES", "21")
    assert len(sources.load_dataset(f"hf:{tmp_path / '20'}", "train", data_mode="loader", val_size=1).classes) == 21


def test_a_validation_split_naming_the_classes_in_another_order_is_read_by_name(same_images, tmp_path):
    """validation's ClassLabel lists train's names in another order: its labels are mapped by name (in memory and
    as rows), so each image keeps its class; a class train lacks is a DataError."""
    items = folder_items(same_images.folder)  # 8 cats, 8 dogs, 8 emus
    held = slice(6, 18)  # cats, dogs and emus
    order = ["emu", "cat", "dog"]  # validation's own order of the same names
    renumbered = [(d, ext, order.index(same_images.classes[y]), p) for d, ext, y, p in items[held]]
    datasets.DatasetDict({"train": hf_dataset_of(items, same_images.classes),
                          "validation": hf_dataset_of(renumbered, order)}).save_to_disk(str(tmp_path / "dd"))
    every = data.decode_folder(data.scan_image_folder(same_images.folder), size=8, channels=1)
    got = sources.load_dataset(f"hf:{tmp_path / 'dd'}", "val", **MEMORY)
    assert got.classes == list(same_images.classes) and set(every.labels[held].tolist()) == {0, 1, 2}
    assert torch.equal(got.labels, every.labels[held]) and torch.equal(got.images, every.images[held])
    rows = sources.load_dataset(f"hf:{tmp_path / 'dd'}", "val", data_mode="loader")
    assert [rows.item(i)[1] for i in range(len(rows))] == every.labels[held].tolist()
    other = [(d, ext, 0, p) for d, ext, _, p in items[16:]]
    datasets.DatasetDict({"train": hf_dataset_of(items[:16], same_images.classes),
                          "validation": hf_dataset_of(other, ["cat", "yak"])}).save_to_disk(str(tmp_path / "yak"))
    with pytest.raises(DataError, match=r"split validation: classes \['yak'\] of its ClassLabel are not among split "
                                        "train's 3 \\(cat, dog, emu\\); splits are matched by class name"):
        sources.load_dataset(f"hf:{tmp_path / 'yak'}", "val", **MEMORY)


def path_cells(folder, paths, classes=("a", "b")):
    """A parquet file in `folder` whose image cells name files by path, without their bytes (save_to_disk would
    embed them)."""
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(classes))})
    ds = datasets.Dataset.from_dict({"image": [{"bytes": None, "path": str(p)} for p in paths],
                                     "label": [i % 2 for i in range(len(paths))]}, features=features)
    path = folder / f"cells-{len(list(folder.glob('*.parquet')))}.parquet"
    ds.to_parquet(str(path))
    return f"hf:{path}"


def test_a_path_cell_names_only_regular_files_of_the_dataset_itself(same_images, hf_cache, tmp_path):
    """Cells that name files: inside the dataset's folder they are read; a FIFO there is refused at once (never
    opened to wait for a writer), and a path outside the folder is refused whatever it names."""
    from conftest import within

    folder = tmp_path / "ds"
    folder.mkdir()
    inside = []
    for i in range(4):
        inside.append(folder / f"{i}.png")
        shutil.copy(same_images.folder / "cat" / f"{i}.png", inside[-1])
    name = path_cells(folder, inside)
    assert len(sources.load_dataset(name, "train", val_size=1, data_mode="memory", img_size=8, channels=1)) == 3
    os.mkfifo(folder / "fifo.png")
    name = path_cells(folder, [folder / "fifo.png"] * 4)
    with within(20), pytest.raises(DataError, match="fifo.png is not a regular file"):
        sources.load_dataset(name, "train", val_size=1, data_mode="memory", img_size=8, channels=1,
                             on_corrupt="error")
    outside = same_images.folder / "dog" / "0.png"
    name = path_cells(folder, [outside] * 4)
    with pytest.raises(DataError, match=rf"the image path {re.escape(repr(str(outside)))} is outside the dataset's "
                                        "folder"):
        sources.load_dataset(name, "train", val_size=1, data_mode="memory", img_size=8, channels=1)
    rows = sources.load_dataset(name, "train", val_size=1, data_mode="loader")
    with pytest.raises(DataError, match="is outside the dataset's folder"):
        rows.item(0)


def test_an_image_cell_larger_than_the_limit_is_refused_before_it_is_read(same_images, tmp_path, monkeypatch):
    items = folder_items(same_images.folder)[:6]
    items[4] = (items[4][0] + b"\0" * 5000, *items[4][1:])
    hf_dataset_of(items, same_images.classes).save_to_disk(str(tmp_path / "big-cell"))
    monkeypatch.setenv("VIT_MAX_MEMBER_BYTES", "4096")
    with pytest.raises(DataError, match=r"split train row 4, column 'image': 5,\d\d\d bytes, over the limit of 4,096 "
                                        ".*VIT_MAX_MEMBER_BYTES"):
        sources.load_dataset(f"hf:{tmp_path / 'big-cell'}", "train", data_mode="loader")
