"""`--dataset wds:PATTERN` (vit/wds_data.py): shards written by webdataset.ShardWriter give the folder's tensors;
a streamed epoch is split over ranks and workers, resumes exactly, and two gloo ranks read disjoint samples
that make up the epoch; truncated shards, unlabelled samples, missing shards and splits are DataErrors naming them.
"""

import io
import json
import logging
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from vit import data
from vit import sources
from vit import wds_data
from vit import train
from vit.errors import ConfigError, DataError

from conftest import folder_items, write_shards

pytest.importorskip("webdataset")

MEMORY = dict(val_size=5, split_seed=3, data_mode="memory", img_size=8, channels=1)


def ids_shards(out: Path, n: int, shard_size: int) -> str:
    """n samples whose label is their index (n classes): what a reader yields says which sample it was."""
    items = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(np.full((4, 4), i % 256, np.uint8), "L").save(buf, "PNG")
        items.append((buf.getvalue(), "png", i, f"{i}.png"))
    return write_shards(out, items, shard_size=shard_size, classes=[str(i) for i in range(n)])


def to_tensor(im):
    return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy())


def epoch_ids(stream, batch, workers=0, rank=0, world=1, epoch=0, start=0) -> list[list[int]]:
    loader, position = data.train_loader(stream, to_tensor, channels=1, on_corrupt="error", batch_size=batch,
                                         workers=workers, seed=0, rank=rank, world=world, pin_memory=False)
    position.set_epoch(epoch, start)
    return [y.tolist() for _, y, _ in loader]


@pytest.mark.parametrize("which", ["shards", "bare_shards"])
def test_shards_decode_to_the_folders_tensors(same_images, which):
    """With _info.json, or counted and labelled by a scan of the tar headers: the folder's tensors, split for
    split, whatever order the samples were written in (key order)."""
    pattern = getattr(same_images, which)
    for split in ("train", "val"):
        ref = data.load_builtin("folder", split, data_dir=str(same_images.folder), **MEMORY)
        got = sources.load_dataset(f"wds:{pattern}", split, **MEMORY)
        assert torch.equal(got.images, ref.images) and torch.equal(got.labels, ref.labels), split
    assert got.classes == (list(same_images.classes) if which == "shards" else ["0", "1", "2"])


def test_a_streamed_epoch_resumes_exactly_and_changes_with_the_epoch(tmp_path):
    """53 samples in shards of 7, batch 6: 8 steps, the last 5 samples of the epoch's order sit out. A pass
    started at step k is the uninterrupted pass from k on (0 and 2 workers); shards and in-shard order are
    drawn again each epoch."""
    stream = sources.load_dataset(f"wds:{ids_shards(tmp_path, 53, 7)}", "train", data_mode="loader")
    assert isinstance(stream, data.StreamData) and len(stream) == 53
    for workers in (0, 2):
        full = epoch_ids(stream, 6, workers)
        assert len(full) == 8 and all(len(b) == 6 for b in full)
        assert len(set(sum(full, []))) == 48  # no sample twice
        assert epoch_ids(stream, 6, workers, start=3) == full[3:]
    assert sum(epoch_ids(stream, 6, 0, epoch=1), []) != sum(epoch_ids(stream, 6, 0), [])
    # Validation: every sample once, each rank and worker its share
    loaders = [data.eval_loader(stream, to_tensor, channels=1, on_corrupt="error", batch_size=4, workers=2, rank=r,
                                world=2, pin_memory=False) for r in range(2)]
    shares = [sum((y.tolist() for _, y, _ in loader), []) for loader in loaders]
    assert sorted(shares[0] + shares[1]) == list(range(53))


def test_buffer_order_is_a_bounded_permutation():
    order = wds_data.buffer_order(2500, seed=1, epoch=2, shard=3, size=100)
    assert sorted(order.tolist()) == list(range(2500))
    assert all(order[k] < k + 100 for k in range(2500))  # output k is among the first k + 100 read
    assert not np.array_equal(order, wds_data.buffer_order(2500, seed=1, epoch=3, shard=3, size=100))


def _rank(rank, world, port, pattern, out):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    stream = sources.load_dataset(f"wds:{pattern}", "train", data_mode="loader")
    seen = [epoch_ids(stream, 8, workers=1, rank=rank, world=world, epoch=e) for e in (0, 1)]
    gathered = [None] * world
    dist.all_gather_object(gathered, seen)
    if rank == 0:
        torch.save(gathered, out)
    dist.destroy_process_group()


def test_two_gloo_ranks_read_disjoint_samples_that_make_up_the_epoch(tmp_path):
    """40 samples in 8 shards of 5, global batch 8: each of 2 ranks reads 5 batches of 4, from the shards its
    part of the epoch lies in; together they read each sample once, in both epochs."""
    import socket

    pattern = ids_shards(tmp_path / "shards", 40, 5)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # fork: the ranks start with this process's imports (spawn would import torch twice more: ~30 s here)
    mp.start_processes(_rank, args=(2, port, pattern, tmp_path / "seen.pt"), nprocs=2, join=True, start_method="fork")
    ranks = torch.load(tmp_path / "seen.pt")
    for epoch in (0, 1):
        a, b = (sum(ranks[r][epoch], []) for r in range(2))
        assert [len(x) for x in ranks[0][epoch]] == [len(x) for x in ranks[1][epoch]] == [4] * 5
        assert not set(a) & set(b) and sorted(a + b) == list(range(40))
    assert sum(ranks[0][0], []) != sum(ranks[0][1], [])


def truncated_copy(pattern: str, tmp_path: Path, info: bool) -> tuple[str, Path]:
    """The shards of `pattern` (with or without _info.json) with shard 0002 cut inside its third sample."""
    src = Path(pattern).parent
    dst = tmp_path / "cut"
    shutil.copytree(src, dst)
    if not info:
        (dst / "_info.json").unlink(missing_ok=True)
    shard = dst / "train-0002.tar"
    import tarfile

    with tarfile.open(shard) as tar:
        third = tar.getmembers()[5]  # members: a.cls a.png b.cls b.png c.cls c.png ...: c's image
    shard.write_bytes(shard.read_bytes()[: third.offset_data + 10])
    return str(dst / Path(pattern).name), shard


@pytest.mark.parametrize("info", [True, False])
def test_a_truncated_shard_is_named_or_skipped_and_counted(same_images, tmp_path, caplog, info):
    """Found at read time (counts from _info.json) or by the scan (no _info.json): --on-corrupt error names the
    shard; skip trains on the rest and logs how many samples were lost."""
    pattern, shard = truncated_copy(same_images.shards, tmp_path, info)
    with pytest.raises(DataError, match=f"shard {shard} is truncated"):
        sources.load_dataset(f"wds:{pattern}", "train", **MEMORY, on_corrupt="error")
    with caplog.at_level(logging.WARNING, logger="vit.wds_data"):
        got = sources.load_dataset(f"wds:{pattern}", "train", **MEMORY)
    lost = "3 of its 5 samples" if info else "the sample cut off"
    assert f"{shard}" in caplog.text and f"skipped {lost}" in caplog.text
    assert len(got) == 24 - 3 - 5  # 2 of the shard's 5 samples remain; 5 held out
    if info:  # streamed: the lost samples are left out of their batches and counted
        stream = sources.load_dataset(f"wds:{pattern}", "train", data_mode="loader")
        loader, position = data.train_loader(stream, to_tensor, channels=1, on_corrupt="skip", batch_size=4, workers=0,
                                             seed=0, rank=0, world=1, pin_memory=False)
        position.set_epoch(0)
        assert sum(skipped for _, _, skipped in loader) == 3


def test_bad_shards_name_the_shard_key_or_split(same_images, tmp_path):
    import webdataset as wds

    (tmp_path / "nolabel").mkdir()
    with wds.ShardWriter(str(tmp_path / "nolabel" / "s-%04d.tar"), maxcount=10, verbose=0) as sink:
        for i in range(4):
            sample = {"__key__": f"{i:06d}", "png": (same_images.folder / "cat" / f"{i}.png").read_bytes()}
            sink.write({**sample, "cls": i % 2} if i != 2 else sample)
    bad = str(tmp_path / "nolabel" / "s-0000.tar")
    with pytest.raises(DataError, match=f"shard {bad}, sample 000002: no label \\(000002.cls"):
        sources.load_dataset(f"wds:{bad}", "train", **MEMORY)
    with pytest.raises(DataError, match=f"1 of 6 shard\\(s\\) missing, e.g. .*train-0005.tar"):
        sources.load_dataset(f"wds:{same_images.shards.replace('0004', '0005')}", "train", **MEMORY)
    with pytest.raises(DataError, match="no split 'validaton' \\(--val-split\\) in _info.json \\(splits: train\\)"):
        sources.load_dataset(f"wds:{same_images.shards}", "val", **MEMORY, val_split="validaton")
    with pytest.raises(DataError, match=r"shard .*bare/train-0000.tar, sample \d+: no label \(\d+.json for "
                       "--label-key json:label\); its members: cls, png"):
        sources.load_dataset(f"wds:{same_images.bare_shards}", "train", **MEMORY, label_key="json:label")
    with pytest.raises(ConfigError, match="streamed shards hold out no validation carve; .*--val-split PATTERN"):
        sources.load_dataset(f"wds:{same_images.shards}", "val", data_mode="loader")
    (tmp_path / "info").mkdir()
    shutil.copy(Path(same_images.shards).parent / "train-0000.tar", tmp_path / "info")
    (tmp_path / "info" / "_info.json").write_text('{"classes": "cat dog emu", "splits": {}}')
    with pytest.raises(DataError, match="_info.json: expected an object with 'splits' .* and 'classes', a list"):
        sources.load_dataset(f"wds:{tmp_path / 'info' / 'train-0000.tar'}", "train", **MEMORY)
    two = write_shards(tmp_path / "two", folder_items(same_images.folder), classes=["cat", "dog"])  # labels 0-2
    with pytest.raises(DataError, match=r"shard .*two/train-000\d.tar, sample \d+: label 2, but there are 2 classes"):
        sources.load_dataset(f"wds:{two}", "train", **MEMORY)


def test_json_labels_and_a_validation_pattern(same_images, tmp_path):
    """Labels from a field of KEY.json; validation shards named by --val-split PATTERN."""
    import webdataset as wds

    (tmp_path / "j").mkdir()
    ref = data.load_builtin("folder", "train", data_dir=str(same_images.folder), **MEMORY)
    files = data.scan_image_folder(same_images.folder).samples
    for split, part in (("train", files[:18]), ("val", files[18:])):
        with wds.ShardWriter(str(tmp_path / "j" / f"{split}-%04d.tar"), maxcount=6, verbose=0) as sink:
            for i, (path, label) in enumerate(part):
                sink.write({"__key__": f"{i:06d}", "png": Path(path).read_bytes(),
                            "json": json.dumps({"label": label, "path": path}).encode()})
    kw = dict(MEMORY, label_key="json:label", val_split=str(tmp_path / "j" / "val-0000.tar"))
    trained = sources.load_dataset(f"wds:{tmp_path / 'j' / 'train-{0000..0002}.tar'}", "train", **kw)
    held_out = sources.load_dataset(f"wds:{tmp_path / 'j' / 'train-{0000..0002}.tar'}", "val", **kw)
    every = data.decode_folder(data.FileData(files, ref.classes), size=8, channels=1)
    assert torch.equal(trained.images, every.images[:18]) and torch.equal(held_out.labels, every.labels[18:])


def test_streamed_training_resumes_bit_identical(same_images, tmp_path):
    """train.py over streamed shards (DataLoader workers, timm's random transforms): stopped after 3 steps and
    resumed, the run ends with the weights of the run never stopped."""
    args = ["--quiet", "--device", "cpu", "--precision", "fp32", "--deterministic", "--dataset",
            f"wds:{same_images.shards}", "--val-split", same_images.shards, "--data-mode", "loader", "--workers", "2",
            "--img-size", "8", "--batch-size", "4", "--epochs", "2", "--warmup-epochs", "0", "--hflip", "0.5",
            "--randaug", "rand-m9-mstd0.5-inc1"]
    assert train.main(args + ["--output", str(tmp_path / "full")]) == 0
    assert train.main(args + ["--max-steps", "3", "--output", str(tmp_path / "cut")]) == 0
    assert train.main(["--resume", str(tmp_path / "cut"), "--max-steps", "0"]) == 0
    full, cut = (torch.load(tmp_path / r / "last.ckpt", weights_only=True) for r in ("full", "cut"))
    assert cut["state"]["step"] == full["state"]["step"] == 12
    for k in full["model"]:
        assert torch.equal(full["model"][k], cut["model"][k]), k


NOT_LOCAL = ["pipe:touch PWNED;cat val.tar", "http://127.0.0.1:9/val.tar", "s3://bucket/val.tar",
             "file:val.tar"]


@pytest.mark.parametrize("name", NOT_LOCAL)
def test_shard_names_that_are_not_local_paths_run_and_fetch_nothing(same_images, tmp_path, monkeypatch, name):
    """A URL or webdataset `pipe:` command as a shard name (in _info.json, in --val-split, in the pattern), even
    with a file of that very name beside it, is a DataError naming it; no shell runs, train.py and evaluate.py
    included."""
    from vit import evaluate

    folder = tmp_path / "shards"
    shutil.copytree(Path(same_images.shards).parent, folder)
    first = folder / "train-0000.tar"
    if "/" not in name:
        shutil.copy(first, folder / name)  # the file the name would read, were it taken as a path
    info = json.loads((folder / "_info.json").read_text())
    info["splits"]["val"] = {"name": "val", "filenames": [name], "shard_lengths": [5], "num_samples": 5}
    (folder / "_info.json").write_text(json.dumps(info))
    monkeypatch.chdir(folder)
    for dataset, kw in (("wds:train-0000.tar", {}), (f"wds:{name}", {}), ("wds:{train-0000.tar," + name + "}", {}),
                        ("wds:train-0001.tar", {"val_split": name})):
        if kw:
            (folder / "_info.json").unlink(missing_ok=True)
        with pytest.raises(DataError, match=f"{re.escape(repr(name))} is not (a local path|the name of a shard)"):
            sources.load_dataset(dataset, "val", **MEMORY, **kw)
    (folder / "_info.json").write_text(json.dumps(info))
    args = ["--quiet", "--device", "cpu", "--dataset", "wds:train-0000.tar", "--img-size", "8", "--epochs", "1",
            "--batch-size", "4"]
    assert train.main(args + ["--output", str(tmp_path / "refused")]) != 0
    assert train.main(args[:4] + [f"wds:{same_images.shards}"] + args[5:] + ["--output", str(tmp_path / "run")]) == 0
    with pytest.raises(SystemExit, match="2"):
        evaluate.main([str(tmp_path / "run"), "--dataset", "wds:train-0000.tar"])
    assert not (folder / "PWNED").exists() and not (tmp_path / "PWNED").exists()


def test_only_regular_files_are_read_as_shards(same_images, tmp_path):
    """A FIFO named where a shard should be is refused at once, never opened to wait for a writer."""
    fifo = tmp_path / "train-0000.tar"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match="missing"):
        sources.load_dataset(f"wds:{fifo}", "train", **MEMORY)
    with pytest.raises(DataError, match="is not a regular file"):
        list(wds_data.read_shard(wds_data.Shard(str(fifo), 1, 0), image_key="", label_key="cls", on_corrupt="error"))


# --------------------------------------------------------------------------------------------------------
# Hostile shards: labels, sizes, patterns and member names bounded before anything is made for them


def tar_of(path: Path, members: list[tuple[str, bytes]]) -> str:
    """A tar shard holding `members` (name, bytes) in this order, written with tarfile (any name, any bytes)."""
    import tarfile

    with tarfile.open(path, "w") as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return str(path)


def png(value: int = 128) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((4, 4), value, np.uint8), "L").save(buf, "PNG")
    return buf.getvalue()


def test_labels_are_integers_and_their_classes_bounded_before_a_list_is_made(tmp_path, monkeypatch):
    """A .cls of 10^12 with no _info.json classes: a DataError naming VIT_MAX_CLASSES at once, never a class list
    of range(10^12); a JSON label of 1.9 is an error, not 1; raising the limit lets a large label set through."""
    import time

    huge = tar_of(tmp_path / "huge.tar", [("a.png", png()), ("a.cls", b"1000000000000"),
                                          ("b.png", png()), ("b.cls", b"1")])
    start = time.perf_counter()
    with pytest.raises(DataError, match=r"labels up to 1,000,000,000,000 make 1,000,000,000,001 classes, over the "
                                        r"limit of 100,000 .*VIT_MAX_CLASSES"):
        sources.load_dataset(f"wds:{huge}", "train", data_mode="loader")
    assert time.perf_counter() - start < 5
    for value, shown in [(1.9, "1.9"), (True, "True"), ("1e3", "'1e3'"), (None, "None")]:
        path = tar_of(tmp_path / "float.tar", [("a.png", png()), ("a.json", json.dumps({"label": 0}).encode()),
                                               ("b.png", png()), ("b.json", json.dumps({"label": value}).encode())])
        with pytest.raises(DataError, match=rf"sample b: no integer label in b.json .*{re.escape(shown)} is not an "
                                            "integer"):
            sources.load_dataset(f"wds:{path}", "train", data_mode="loader", label_key="json:label")
    for text in (b"1.9", b"\xc2\xb2", b""):  # a .cls: the text of an integer ("\xc2\xb2" is "²")
        path = tar_of(tmp_path / "cls.tar", [("a.png", png()), ("a.cls", b"0"), ("b.png", png()), ("b.cls", text)])
        with pytest.raises(DataError, match="sample b: no integer label in b.cls"):
            sources.load_dataset(f"wds:{path}", "train", data_mode="loader")
    wide = tar_of(tmp_path / "wide.tar", [("a.png", png()), ("a.cls", b" 7\n"), ("b.png", png()), ("b.cls", b"0")])
    monkeypatch.setenv("VIT_MAX_CLASSES", "5")
    with pytest.raises(DataError, match="labels up to 7 make 8 classes, over the limit of 5"):
        sources.load_dataset(f"wds:{wide}", "train", data_mode="loader")
    monkeypatch.setenv("VIT_MAX_CLASSES", "8")
    assert len(sources.load_dataset(f"wds:{wide}", "train", data_mode="loader").classes) == 8


def test_a_brace_pattern_is_counted_before_it_is_expanded(same_images, tmp_path, monkeypatch):
    """10^9 shard names: a DataError naming the count and VIT_MAX_SHARDS in well under a second, without making a
    name (braceexpand would build all 10^9 first); a pattern within the limit is read as before."""
    import time

    start = time.perf_counter()
    with pytest.raises(DataError, match=r"the pattern names 1,000,000,000 shard files, over the limit of 100,000 "
                                        r"\(shard files a pattern may name\); raise it with the environment variable "
                                        "VIT_MAX_SHARDS"):
        sources.load_dataset(f"wds:{tmp_path}/s-{{0..999}}{{0..999}}{{0..999}}.tar", "train", **MEMORY)
    with pytest.raises(DataError, match="VIT_MAX_SHARDS"):
        sources.load_dataset(f"wds:{tmp_path}/s-{{000000000..999999999}}.tar", "train", **MEMORY)
    assert time.perf_counter() - start < 1
    monkeypatch.setenv("VIT_MAX_SHARDS", "4")
    with pytest.raises(DataError, match="names 5 shard files, over the limit of 4"):
        sources.load_dataset(f"wds:{same_images.shards}", "train", **MEMORY)
    monkeypatch.setenv("VIT_MAX_SHARDS", "5")
    assert len(sources.load_dataset(f"wds:{same_images.shards}", "train", **MEMORY)) == 19


@pytest.mark.parametrize("info", [True, False])
def test_a_member_larger_than_the_limit_is_refused_from_its_header(tmp_path, monkeypatch, info):
    """A member's size is read from its tar header and bounded (VIT_MAX_MEMBER_BYTES) before its bytes are: by the
    reader where _info.json gives the counts, by the scan where it does not; in memory and streamed."""
    shard = tar_of(tmp_path / "train-0000.tar", [("a.png", png()), ("a.cls", b"0"),
                                                 ("b.png", png() + b"\0" * 5000), ("b.cls", b"1")])
    if info:
        (tmp_path / "_info.json").write_text(json.dumps({"classes": ["x", "y"], "splits": {"train": {
            "name": "train", "filenames": ["train-0000.tar"], "shard_lengths": [2], "num_samples": 2}}}))
    monkeypatch.setenv("VIT_MAX_MEMBER_BYTES", "4096")
    match = rf"shard {re.escape(shard)}, member b.png: 5,\d\d\d bytes, over the limit of 4,096 .*VIT_MAX_MEMBER_BYTES"
    with pytest.raises(DataError, match=match):
        sources.load_dataset(f"wds:{shard}", "train", val_size=1, data_mode="memory", img_size=4, channels=1)
    if info:
        stream = sources.load_dataset(f"wds:{shard}", "train", data_mode="loader")
        with pytest.raises(DataError, match=match):
            list(data.eval_loader(stream, to_tensor, channels=1, on_corrupt="skip", batch_size=2, workers=0, rank=0,
                                  world=1, pin_memory=False))
    monkeypatch.setenv("VIT_MAX_MEMBER_BYTES", "8192")
    assert len(sources.load_dataset(f"wds:{shard}", "train", data_mode="loader")) == 2


def test_running_out_of_memory_is_not_reported_as_a_truncated_shard(same_images, monkeypatch):
    """A member that does not fit in memory (here a MemoryError from the read) is said as such, scan or read."""
    import tarfile

    def no_memory(self, *args):
        raise MemoryError

    monkeypatch.setattr(tarfile.ExFileObject, "read", no_memory)
    for pattern in (same_images.shards, same_images.bare_shards):  # read by the reader, or first by the scan
        with pytest.raises(DataError, match=r"member \d+\.(png|cls): \d+ bytes do not fit in this process's memory") \
                as e:
            sources.load_dataset(f"wds:{pattern}", "train", **MEMORY, on_corrupt="skip")
        assert "truncated" not in str(e.value)


@pytest.mark.parametrize("info", [True, False])
def test_the_scan_and_the_reader_agree_on_what_a_sample_is(tmp_path, info):
    """Members whose name starts with "__" are no sample for the scan, nor for the reader: with counts from
    _info.json (which the reader trusts) or from the scan, the samples read are the real ones, each once, and
    the odd ones are never trained on."""
    members = [("__odd.png", png(250)), ("__odd.cls", b"1")]
    for i in range(4):
        members += [(f"{i:06d}.png", png(10 * i)), (f"{i:06d}.cls", str(i % 2).encode())]
    members += [("__meta__", b"{}"), ("dir/__x.png", png(1)), ("dir/__x.cls", b"0")]  # webdataset's metadata form
    shard = tar_of(tmp_path / "train-0000.tar", members)
    n, _, truncated = wds_data.scan_shard(shard, "cls")
    assert (n, truncated) == (5, False)  # the four, and dir/__x: a key of its own (only names at the root are "__")
    if info:
        (tmp_path / "_info.json").write_text(json.dumps({"classes": ["x", "y"], "splits": {"train": {
            "name": "train", "filenames": ["train-0000.tar"], "shard_lengths": [n], "num_samples": n}}}))
    stream = sources.load_dataset(f"wds:{shard}", "train", data_mode="loader")
    keys = [key for _, key, _, _ in wds_data.read_shard(stream.set.shards[0], image_key="", label_key="cls",
                                                         on_corrupt="error")]
    assert keys == ["000000", "000001", "000002", "000003", "dir/__x"]


def test_shard_counts_in_info_json_are_bounded_by_the_shard(same_images, tmp_path):
    """_info.json cannot claim more samples than a shard's bytes can hold (each sample a 512-byte header at the
    least), nor a count that is not an integer: the streamed epoch would size its buffers by them."""
    folder = tmp_path / "shards"
    shutil.copytree(Path(same_images.shards).parent, folder)
    info = json.loads((folder / "_info.json").read_text())
    for lie, match in [(10**12, r"train-0000.tar: _info.json says it holds 1,000,000,000,000 samples, but its "
                                r"[\d,]+ bytes hold at most"),
                       (1.9, r"each split needs 'filenames' and 'shard_lengths' \(counts\): .*1.9 samples")]:
        info["splits"]["train"]["shard_lengths"][0] = lie
        (folder / "_info.json").write_text(json.dumps(info))
        with pytest.raises(DataError, match=match):
            sources.load_dataset(f"wds:{folder / Path(same_images.shards).name}", "train", data_mode="loader")
