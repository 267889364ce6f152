"""Data sources on tiny data made here (IDX .gz, CIFAR pickles in torchvision's layout, ImageFolder JPEGs),
and the on-device augmentation against per-image oracles."""

import gzip
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from vit import data, transforms
from vit.errors import ConfigError, DataError

from conftest import make_folder, make_idx_dir

# ---- digits


def test_digits_split_is_fixed_disjoint_and_complete():
    from sklearn.datasets import load_digits

    train, val = data.digits_split("train"), data.digits_split("val")
    assert len(train) + len(val) == 1797 and len(val) == 359
    assert train.images.dtype == torch.uint8 and train.images.shape[1:] == (1, 8, 8)
    assert torch.equal(data.digits_split("val").images, val.images)  # same seed, same split
    assert torch.equal(data.digits_split("test").labels, val.labels)  # "test" is the held-out split too
    # Together the two splits are exactly sklearn's images (0..16 scaled to 0..255), each once.
    ref = load_digits()
    ref_rows = {(np.round(im * 255 / 16).astype(np.uint8).tobytes(), int(t)) for im, t in zip(ref.images, ref.target)}
    ours = [(im.numpy().tobytes(), int(t)) for d in (train, val) for im, t in zip(d.images[:, 0], d.labels)]
    assert set(ours) == ref_rows


# ---- IDX (MNIST layout), written here byte by byte


def test_idx_files_load_exactly(tmp_path):
    arrays = make_idx_dir(tmp_path)
    for split, prefix in (("train", "train"), ("val", "t10k"), ("test", "t10k")):
        d = data.load_builtin("fashion-mnist", split, data_dir=str(tmp_path))
        assert d.images.shape == (len(arrays[prefix][0]), 1, 28, 28)
        assert np.array_equal(d.images[:, 0].numpy(), arrays[prefix][0])
        assert np.array_equal(d.labels.numpy(), arrays[prefix][1])
        assert d.classes[0] == "T-shirt/top"


def test_idx_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="no train-images-idx3"):
        data.idx_split(tmp_path, "train", data.MNIST_CLASSES)
    bad = tmp_path / "x.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"\x00\x00\x0d\x01" + b"\x00" * 8)
    with pytest.raises(DataError, match="x.gz"):
        data.read_idx(bad)


def test_real_fashion_mnist_if_installed():
    from pathlib import Path

    if not Path(data.FASHION_MNIST_DIR, "t10k-labels-idx1-ubyte.gz").exists():
        pytest.skip("dataset-fashion-mnist not installed")
    d = data.load_builtin("fashion-mnist", "test")
    assert d.images.shape == (10000, 1, 28, 28) and torch.bincount(d.labels).tolist() == [1000] * 10


# ---- CIFAR pickles in torchvision's layout, read by torchvision's own CIFAR10 class


def test_cifar10_through_torchvision(tiny_cifar10):
    root, written = tiny_cifar10
    train = data.load_builtin("cifar10", "train", data_dir=str(root))
    val = data.load_builtin("cifar10", "val", data_dir=str(root))
    assert train.images.shape == (20, 3, 32, 32) and val.images.shape == (4, 3, 32, 32)
    pixels, labels = written["test_batch"]
    assert np.array_equal(val.images.numpy(), pixels.reshape(-1, 3, 32, 32)) and val.labels.tolist() == labels
    assert train.classes[0] == "airplane"


def test_cifar_missing_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="--download"):
        data.load_builtin("cifar10", "train", data_dir=str(tmp_path))


def test_download_without_a_network_is_a_clear_error(tmp_path, monkeypatch):
    """A refused connection, and a server that accepts and never answers (no hang: a socket timeout), each
    give a DataError naming the dataset and the folder; --download of a dataset it cannot fetch is refused."""
    import socket

    from torchvision.datasets import CIFAR10

    silent = socket.create_server(("127.0.0.1", 0))  # listens, never accepts or answers
    closed = socket.create_server(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()  # nothing listens there: connection refused
    monkeypatch.setattr(data, "DOWNLOAD_TIMEOUT_S", 0.5)
    try:
        for port, reason in [(closed_port, "refused"), (silent.getsockname()[1], "timed out")]:
            monkeypatch.setattr(CIFAR10, "url", f"http://127.0.0.1:{port}/cifar-10-python.tar.gz")
            with pytest.raises(DataError, match=rf"cannot download cifar10 into {tmp_path}: .*{reason}.*"
                                                r"cifar-10-batches-py/ \(or cifar-10-python.tar.gz\)"):
                data.load_builtin("cifar10", "train", data_dir=str(tmp_path), download=True)
    finally:
        silent.close()
    assert socket.getdefaulttimeout() is None  # put back
    with pytest.raises(ConfigError, match="--download fetches cifar10 and cifar100 only, not --dataset digits"):
        data.load_builtin("digits", "train", download=True)


# ---- ImageFolder trees of JPEGs


def test_single_tree_carves_a_seeded_disjoint_val_split(tmp_path):
    make_folder(tmp_path)
    train = data.folder_split(tmp_path, "train", val_size=0.25, seed=3)
    val = data.folder_split(tmp_path, "val", val_size=0.25, seed=3)
    assert len(train) == 14 and len(val) == 4  # round(18 * 0.25)
    assert not {p for p, _ in train.samples} & {p for p, _ in val.samples}
    assert data.folder_split(tmp_path, "val", val_size=0.25, seed=3).samples == val.samples
    assert data.folder_split(tmp_path, "val", val_size=3, seed=3).samples != val.samples  # a count works too
    assert train.classes == ["cat", "dog", "emu"]


def test_train_val_tree_and_memory_decoding(tmp_path):
    make_folder(tmp_path / "train")
    make_folder(tmp_path / "val", per_class=2, seed=1)
    val = data.load_builtin("folder", "val", data_dir=str(tmp_path), img_size=8, channels=3)
    assert isinstance(val, data.TensorData) and val.images.shape == (6, 3, 8, 8)
    assert val.labels.tolist() == [0, 0, 1, 1, 2, 2]
    # Decoding matches PIL directly (convert, bilinear resize).
    ref = np.asarray(Image.open(tmp_path / "val" / "cat" / "0.jpg").convert("RGB").resize((8, 8), Image.BILINEAR))
    assert np.array_equal(val.images[0].permute(1, 2, 0).numpy(), ref)
    files = data.load_builtin("folder", "train", data_dir=str(tmp_path), data_mode="loader")
    assert isinstance(files, data.FileData) and len(files) == 18


def test_corrupt_images_skipped_with_count_or_error(tmp_path, caplog):
    make_folder(tmp_path, per_class=3)
    (tmp_path / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (tmp_path / "dog" / "empty.png").write_bytes(b"")
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    files = data.scan_image_folder(tmp_path)
    assert len(files) == 11  # the .txt is ignored by extension
    with caplog.at_level(logging.WARNING, logger="vit.data"):
        d = data.decode_folder(files, size=8, channels=3, on_corrupt="skip")
    assert len(d) == 9 and "skipped 2 unreadable image(s)" in caplog.text
    with pytest.raises(DataError, match="broken.jpg"):
        data.decode_folder(files, size=8, channels=3, on_corrupt="error")


def test_empty_class_folder_and_single_class_are_errors(tmp_path):
    make_folder(tmp_path / "a", classes=("x", "y"))
    (tmp_path / "a" / "z").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        data.scan_image_folder(tmp_path / "a")
    make_folder(tmp_path / "b", classes=("only",))
    with pytest.raises(DataError, match="at least 2"):
        data.scan_image_folder(tmp_path / "b")


def test_file_loader_with_timm_transforms_skips_corrupt(tmp_path):
    from vit import Preprocess

    make_folder(tmp_path, per_class=2)
    (tmp_path / "cat" / "broken.jpg").write_bytes(b"garbage")
    files = data.scan_image_folder(tmp_path)
    pre = Preprocess((3, 16, 16), (0.5,) * 3, (0.5,) * 3, "bilinear", 1.0)
    tf = transforms.file_transforms(pre, train=True, randaug="rand-m9-mstd0.5-inc1", reprob=0.25)
    sampler = data.ShardSampler(len(files), 7, seed=0, rank=0, world=1)
    loader = data.file_loader(files, tf, channels=3, on_corrupt="skip", batch_size=7, workers=0, sampler=sampler,
                              pin_memory=False)
    batches = list(loader)
    assert sum(len(y) for _, y, _ in batches) + sum(s for _, _, s in batches) == 7  # one step of 7
    x, y, _ = batches[0]
    assert x.dtype == torch.float32 and x.shape[1:] == (3, 16, 16)


# ---- augmentation and sharding


def test_augment_batch_matches_a_per_image_oracle():
    x = torch.randint(0, 256, (5, 3, 6, 7), dtype=torch.uint8)
    assert torch.equal(data.augment_batch(x, torch.Generator().manual_seed(0), pad=0, hflip=0.0), x)
    pad = 2
    out = data.augment_batch(x, torch.Generator().manual_seed(1), pad=pad, hflip=0.5)
    g = torch.Generator().manual_seed(1)  # replay the same draws
    dy, dx = torch.randint(0, 2 * pad + 1, (5,), generator=g), torch.randint(0, 2 * pad + 1, (5,), generator=g)
    flip = torch.rand(5, generator=g) < 0.5
    for i in range(5):
        padded = torch.zeros(3, 6 + 2 * pad, 7 + 2 * pad, dtype=torch.uint8)
        padded[:, pad:pad + 6, pad:pad + 7] = x[i]
        ref = padded[:, dy[i]:dy[i] + 6, dx[i]:dx[i] + 7]
        assert torch.equal(out[i], ref.flip(-1) if flip[i] else ref)


def test_rank_shards_make_up_the_global_batch():
    tensors = data.TensorData(torch.arange(40, dtype=torch.uint8).view(40, 1, 1, 1).expand(40, 1, 2, 2).clone(),
                              torch.arange(40), [str(i) for i in range(40)])
    perm = data.epoch_permutation(40, seed=0, epoch=1)
    one = data.memory_batch(tensors, perm, 2, batch_size=8, rank=0, world=1, gen=torch.Generator().manual_seed(5),
                            pad=1, hflip=0.5)
    two = [data.memory_batch(tensors, perm, 2, batch_size=8, rank=r, world=2, gen=torch.Generator().manual_seed(5),
                             pad=1, hflip=0.5) for r in range(2)]
    assert torch.equal(torch.cat([t[0] for t in two]), one[0]) and torch.equal(torch.cat([t[1] for t in two]), one[1])
    loader_idx = [[i for i, _ in data.ShardSampler(40, 8, seed=0, rank=r, world=2)] for r in range(2)]
    assert sorted(loader_idx[0] + loader_idx[1]) == list(range(40))
    s = data.ShardSampler(40, 8, seed=0, rank=0, world=1)
    s.set_epoch(1, start_step=2)
    assert [i for i, _ in s][:8] == perm[16:24].tolist()  # mid-epoch resume starts at the right batch


def test_unknown_dataset_and_split():
    with pytest.raises(ConfigError, match="imagenet"):
        data.load_builtin("imagenet", "train")
    with pytest.raises(ConfigError, match="dev"):
        data.digits_split("dev")


# ---- image files of unusual kinds


def test_high_bit_depth_images_keep_their_contrast(tmp_path):
    """PIL's own conversion clips 16-bit and float pixels (a mid-gray 16-bit PNG comes out white)."""
    Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16)).save(tmp_path / "gray16.png")
    Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32)).save(tmp_path / "gray.tiff")
    for name in ("gray16.png", "gray.tiff"):
        assert np.asarray(data.load_image(str(tmp_path / name), "L")).tolist() == [[128] * 4] * 4, name
    assert np.asarray(data.load_image(str(tmp_path / "gray16.png"), "RGB")).shape == (4, 4, 3)
    Image.fromarray(np.full((4, 4), np.nan, dtype=np.float32)).save(tmp_path / "nan.tiff")
    with pytest.raises(DataError, match=r"nan.tiff.*NaN"):
        data.load_image(str(tmp_path / "nan.tiff"), "L")


def test_decompression_bomb_is_a_data_error(tmp_path, monkeypatch):
    Image.new("L", (64, 64)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4,096 pixels: over twice the limit, PIL refuses
    with pytest.raises(DataError, match=r"bomb.png"):
        data.load_image(str(tmp_path / "bomb.png"), "RGB")


def test_timm_posterize_at_zero_bits_gives_black_as_torchvision():
    """timm's RandAugment can draw magnitude 10 (0 bits kept) for PosterizeIncreasing, which Pillow refuses:
    the loader's transform makes it a black image, torchvision's posterize(0) on the same pixels."""
    import torchvision.transforms.functional as TF
    from PIL import Image
    from vit import Preprocess

    tf = transforms.file_transforms(Preprocess((3, 16, 16)), train=True, randaug="rand-m10-mstd0-inc1")
    (op,) = [op for t in tf.transforms for op in getattr(t, "ops", ()) if op.name == "PosterizeIncreasing"]
    op.prob = 1.0
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (9, 9, 3), dtype=np.uint8))
    pixels = TF.pil_to_tensor(img)
    assert torch.equal(TF.pil_to_tensor(op(img)), TF.posterize(pixels, 0))
    op.magnitude = 5  # 2 bits: timm's own path, as before
    assert torch.equal(TF.pil_to_tensor(op(img)), TF.posterize(pixels, 2))


def test_seeded_rngs_draw_as_the_global_seeds_and_put_the_states_back():
    """A sample's draws are those of random.seed, np.random.seed and torch.manual_seed with its seed (what timm's
    transforms read), and the main process's generators go on as if nothing had drawn."""
    import random

    def draws():
        return random.random(), float(np.random.rand()), torch.rand(3).tolist(), torch.randint(0, 9, (2,)).tolist()

    random.seed(11), np.random.seed(11), torch.manual_seed(11)
    after = draws()
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    reference = draws()
    random.seed(11), np.random.seed(11), torch.manual_seed(11)
    with data.seeded_rngs(5):
        assert draws() == reference
    assert draws() == after


def test_a_header_claiming_a_huge_image_is_refused_before_decoding(tmp_path):
    """A 100-byte PNG whose header claims 12,000 x 12,000 pixels: between PIL's limit and twice it, where PIL
    itself only warns and would allocate 144 million pixels before finding the data missing."""
    import struct
    import zlib

    Image.new("RGB", (1, 1)).save(tmp_path / "big.png")
    png = bytearray((tmp_path / "big.png").read_bytes())
    struct.pack_into(">II", png, 16, 12000, 12000)  # IHDR's width and height, then its CRC
    struct.pack_into(">I", png, 29, zlib.crc32(bytes(png[12:29])))
    (tmp_path / "big.png").write_bytes(bytes(png))
    assert Image.MAX_IMAGE_PIXELS < 12000**2 < 2 * Image.MAX_IMAGE_PIXELS
    with pytest.raises(DataError, match=r"big.png: 12000x12000 pixels, over PIL's limit of 89478485"):
        data.load_image(str(tmp_path / "big.png"), "RGB")


# ---- hostile inputs: one label policy, sizes bounded before resizing, regular files only


def test_a_label_is_an_integer_and_numbered_classes_are_bounded(monkeypatch):
    """Labels read from files: an integer or its text, nothing else (1.9 is not 1, true is not 1); classes made
    from the largest label are bounded by VIT_MAX_CLASSES before the list exists."""
    import time

    assert [data.label_value(v) for v in (3, "3", " 3\n", "-1", "+2")] == [3, 3, 3, -1, 2]
    for bad in (1.9, 2.0, True, None, "1.9", "1e3", "²", "", "0x10", [1], "9" * 30):
        with pytest.raises(ValueError, match="is not an integer"):
            data.label_value(bad)
    start = time.perf_counter()
    with pytest.raises(DataError, match=r"here: labels up to 1,000,000,000,000 make 1,000,000,000,001 classes, over "
                                        r"the limit of 100,000 \(classes a dataset's labels may index\); raise it "
                                        "with the environment variable VIT_MAX_CLASSES"):
        data.numbered_classes(10**12, "here")
    assert time.perf_counter() - start < 1
    assert data.numbered_classes(2, "here") == ["0", "1", "2"]
    monkeypatch.setenv("VIT_MAX_CLASSES", "not a number")
    with pytest.raises(ConfigError, match="VIT_MAX_CLASSES='not a number' must be a positive integer"):
        data.numbered_classes(2, "here")


def test_torchvision_labels_outside_its_classes_are_a_data_error(tiny_cifar10, monkeypatch):
    import hashlib
    import pickle

    from torchvision.datasets import CIFAR10

    root, written = tiny_cifar10
    batch = root / "cifar-10-batches-py" / "test_batch"
    pixels, labels = written["test_batch"]
    with open(batch, "wb") as f:
        pickle.dump({"data": pixels, "labels": [*labels[:-1], 10]}, f)
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", hashlib.md5(batch.read_bytes()).hexdigest()]])
    with pytest.raises(DataError, match=r"cifar10 under .* \(val\): label 10, but there are 10 classes"):
        data.load_builtin("cifar10", "val", data_dir=str(root))


def test_val_size_must_be_a_finite_count_or_fraction():
    for bad in (float("nan"), float("inf"), -0.5):
        with pytest.raises(ConfigError, match="--val-size must be a finite number >= 0"):
            data.carve(10, "train", val_size=bad, seed=0, where="x")


def test_a_fifo_is_refused_not_opened_to_wait(tmp_path):
    """load_image, which every reader of image files goes through (folders, --predict, hf: path cells), and the
    IDX reader open regular files only: a FIFO is refused at once instead of waiting for a writer."""
    import os

    from conftest import within

    os.mkfifo(tmp_path / "x.png")
    with within(10), pytest.raises(DataError, match=rf"cannot read image {tmp_path / 'x.png'}: .*is not a regular file"):
        data.load_image(str(tmp_path / "x.png"), "RGB")
    with pytest.raises(DataError, match=rf"cannot read image {tmp_path / 'nothing.png'}: cannot open"):
        data.load_image(str(tmp_path / "nothing.png"), "RGB")
    os.mkfifo(tmp_path / "train-images-idx3-ubyte.gz")  # IDX files are opened the same way
    with within(10), pytest.raises(DataError, match="train-images-idx3-ubyte.gz is not a regular file"):
        data.read_idx(tmp_path / "train-images-idx3-ubyte.gz")


def test_evaluation_resizes_an_image_of_extreme_aspect_without_blowing_it_up():
    """A 2x50000 image would be resized to 256x6,400,000 pixels (4.6 GB) before the centre crop: its centre is
    cut to transforms.MAX_ASPECT first, which leaves the crop's pixels as they were and images within the ratio
    untouched."""
    from vit import Preprocess

    wide = transforms.CentralAspect(16)
    assert wide(Image.new("L", (50000, 2))).size == (32, 2) and wide(Image.new("L", (2, 50000))).size == (2, 32)
    assert wide(Image.new("L", (160, 10))).size == (160, 10)
    rng = np.random.default_rng(0)
    pre = Preprocess((3, 224, 224), (0.5,) * 3, (0.5,) * 3, "bicubic", 0.875)
    tf = transforms.file_transforms(pre, train=False)
    assert isinstance(tf.transforms[0], transforms.CentralAspect)
    assert tf(Image.new("RGB", (50000, 2), "gray")).shape == (3, 224, 224)
    stripe = Image.fromarray(rng.integers(0, 256, (100, 3000, 3), dtype=np.uint8))  # 30:1, centre kept whole
    untouched = transforms.file_transforms(pre, train=False)
    untouched.transforms.pop(0)
    torch.testing.assert_close(tf(stripe), untouched(stripe), atol=0.02, rtol=0)


def test_an_idx_file_is_read_no_further_than_its_header_says(tmp_path):
    """A gzipped IDX file that inflates far past its header's shape (a decompression bomb) is refused after
    shape + 1 bytes are read; a header claiming more than an IDX file may hold is refused before any are."""
    import gzip
    import resource
    import struct

    bomb = tmp_path / "bomb-idx3-ubyte.gz"
    with gzip.open(bomb, "wb") as f:
        f.write(struct.pack(">BBBBIII", 0, 0, 8, 3, 10, 2, 2))
        for _ in range(64):
            f.write(bytes(2**24))  # 1 GiB of zeros inflated, ~1 MB on disk
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(DataError, match="header says shape \\(10, 2, 2\\) but the file holds more than 40 bytes"):
        data.read_idx(bomb)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024  # KiB: nothing inflated whole
    huge = tmp_path / "huge-idx1-ubyte"
    huge.write_bytes(struct.pack(">BBBBII", 0, 0, 8, 2, 2**16, 2**16 + 1))
    with pytest.raises(DataError, match="more than an IDX file here may hold"):
        data.read_idx(huge)


def test_a_cifar_file_that_is_not_a_regular_file_is_refused_at_once(tmp_path):
    """torchvision opens CIFAR's batch files itself: a FIFO among them is refused before it would wait."""
    import os

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    os.mkfifo(folder / "data_batch_1")
    with pytest.raises(DataError, match="data_batch_1 is not a regular file"):
        data.cifar_split("cifar10", tmp_path, "train", download=False)
