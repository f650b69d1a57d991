"""IDX reading and checking, splits, and the fast offline failure of the TFDS path."""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import numpy as np
import pytest

from mnist_mlp import data
from mnist_mlp.cli import main
from mnist_mlp.config import DataConfig
from mnist_mlp.data import DataError, Split, load_mnist, parse_idx, read_idx_folder, split

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = np.array([magic, *array.shape], dtype=">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def images(n: int) -> bytes:
    return idx_bytes(np.arange(n * 784).reshape(n, 28, 28) % 256, data.IMAGE_MAGIC)


def labels(n: int) -> bytes:
    return idx_bytes(np.arange(n) % 10, data.LABEL_MAGIC)


def test_parse_idx_reads_header_and_data():
    array = parse_idx(images(3), "x", is_images=True)
    assert array.shape == (3, 28, 28) and array.dtype == np.uint8
    assert parse_idx(labels(12), "y", is_images=False).tolist() == [*range(10), 0, 1]


@pytest.mark.parametrize(
    "raw, is_images, message",
    [
        (labels(20), True, "wrong magic number 2049, expected 2051 for an IDX image file"),
        (images(5), False, "wrong magic number 2051, expected 2049 for an IDX label file"),
        (images(5)[:10], True, "truncated: 10 bytes, shorter than the IDX header"),
        (images(5)[:-1], True, "truncated: header promises 3920 data bytes, found 3919"),
        (labels(5) + b"\0", False, "has trailing bytes"),
        (idx_bytes(np.zeros((2, 27, 27)), data.IMAGE_MAGIC), True, "images are 27x27, expected 28x28"),
    ],
    ids=["label-magic-as-images", "image-magic-as-labels", "short-header", "short-data", "trailing", "27x27"],
)
def test_parse_idx_rejects_malformed_files(raw, is_images, message):
    with pytest.raises(DataError, match="^where: ") as caught:
        parse_idx(raw, "where", is_images)
    assert message in str(caught.value)


def write_folder(folder: Path, sizes: dict[str, int], gz: bool = False) -> Path:
    folder.mkdir(exist_ok=True)
    for name, n in sizes.items():
        raw = images(n) if "images" in name else labels(n)
        (folder / (name + ".gz" if gz else name)).write_bytes(gzip.compress(raw) if gz else raw)
    return folder


SMALL = {name: 5 for name in data.IDX_FILES}


def test_count_mismatch_is_reported(tmp_path):
    folder = write_folder(tmp_path / "d", SMALL, gz=True)
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: holds 5 records, MNIST has 60000"):
        read_idx_folder(folder)


def test_missing_file_and_folder_are_reported(tmp_path):
    folder = write_folder(tmp_path / "d", {"train-images-idx3-ubyte": 5, "t10k-images-idx3-ubyte": 5})
    with pytest.raises(DataError, match=r"missing train-labels-idx1-ubyte\[.gz\]; set MNIST_MLP_DATA_DIR"):
        read_idx_folder(folder, verify=False)
    with pytest.raises(DataError, match="MNIST data folder not found"):
        read_idx_folder(tmp_path / "absent")


def test_corrupt_gzip_is_reported(tmp_path):
    folder = write_folder(tmp_path / "d", SMALL, gz=True)
    (folder / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: cannot read"):
        read_idx_folder(folder)


def real_folder_with(tmp_path: Path, mnist_dir: Path, replace: dict[str, bytes]) -> Path:
    """Links to the real files, except the ones given as raw (uncompressed) bytes."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in data.IDX_FILES:
        if name in replace:
            (folder / name).write_bytes(replace[name])
        else:
            (folder / f"{name}.gz").symlink_to(data._find(mnist_dir, name).resolve())
    return folder


def test_content_is_verified_against_the_canonical_checksums(tmp_path, mnist_dir):
    folder = real_folder_with(tmp_path, mnist_dir, {"t10k-labels-idx1-ubyte": labels(10000)})
    with pytest.raises(DataError, match="content differs from the canonical MNIST file"):
        read_idx_folder(folder)
    _, test = read_idx_folder(folder, verify=False)  # data.verify: false accepts it
    assert len(test) == 10000


def test_uncompressed_files_are_read_too(tmp_path, mnist_dir):
    raw = gzip.decompress(data._find(mnist_dir, "t10k-labels-idx1-ubyte").read_bytes())
    folder = real_folder_with(tmp_path, mnist_dir, {"t10k-labels-idx1-ubyte": raw})
    _, test = read_idx_folder(folder)
    assert test.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


def test_real_mnist_matches_the_known_facts(mnist_splits):
    train, test = mnist_splits
    assert train.images.shape == (60000, 28, 28) and test.images.shape == (10000, 28, 28)
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.uint8
    assert np.bincount(train.labels).tolist() == TRAIN_COUNTS
    assert np.bincount(test.labels).tolist() == TEST_COUNTS
    assert train.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert test.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


def test_validation_is_held_out_of_the_end_of_the_training_set():
    train = Split(np.zeros((100, 28, 28), np.uint8), np.arange(100, dtype=np.uint8) % 10)
    test = Split(np.zeros((30, 28, 28), np.uint8), np.zeros(30, np.uint8))
    mnist = split(train, test, DataConfig(validation_size=20, train_limit=50, test_limit=10), "t")
    assert len(mnist.train) == 50 and len(mnist.validation) == 20 and len(mnist.test) == 10
    assert mnist.validation.labels.tolist() == (np.arange(80, 100) % 10).tolist()
    assert split(train, test, DataConfig(), "t").validation is None


def test_config_dir_wins_over_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "from-env"))
    with pytest.raises(DataError, match="from-config"):
        load_mnist(DataConfig(dir=str(tmp_path / "from-config")))
    with pytest.raises(DataError, match="from-env"):
        load_mnist(DataConfig())


def test_tfds_path_fails_fast_and_says_how_to_point_at_idx_files(tmp_path, monkeypatch):
    """No cached TFDS copy and an unreachable download host: one clear error within seconds."""
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.setattr(data, "TFDS_PROBE_URL", "https://mnist-mlp-offline-test.invalid/x.gz")
    started = time.monotonic()
    with pytest.raises(DataError, match="TFDS cannot reach mnist-mlp-offline-test.invalid; set MNIST_MLP_DATA_DIR"):
        load_mnist(DataConfig())
    assert time.monotonic() - started < 10


def test_cli_reports_bad_data_with_exit_2_and_makes_no_run_folder(tmp_path, capsys):
    folder = write_folder(tmp_path / "d", SMALL)
    out = tmp_path / "run"
    code = main(["train", "--set", f"data.dir={folder}", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert "holds 5 records, MNIST has 60000" in err
    assert not out.exists()


def test_tensorflow_datasets_imports_with_the_pinned_metadata():
    """tensorflow-metadata 1.18+ broke `import tensorflow_datasets` under TF 2.19's protobuf: keep the pin honest."""
    import tensorflow_datasets as tfds

    assert tfds.builder("mnist").info.features["image"].shape == (28, 28, 1)


def test_the_origin_of_the_data_is_recorded_completely(mnist_dir, mnist_splits):
    mnist = load_mnist(DataConfig(dir=str(mnist_dir), train_limit=10))
    folder = str(Path(mnist_dir).absolute())
    assert mnist.origin.folder == folder and mnist.origin.tfds_version is None
    assert mnist.origin.digest == data.content_digest(*mnist_splits) and len(mnist.origin.digest) == 64
    assert mnist.source == f"IDX files in {folder}"
    assert mnist.origin.recorded() == {
        "data.dir": folder,
        "data.tfds_version": None,
        "data.digest": mnist.origin.digest,
    }


def test_data_that_differs_from_the_recorded_digest_is_refused(mnist_dir, mnist_splits):
    digest = data.content_digest(*mnist_splits)
    assert load_mnist(DataConfig(dir=str(mnist_dir), digest=digest)).origin.digest == digest
    with pytest.raises(DataError, match=r"not the data the run was trained on \(content SHA-256 [0-9a-f]{12}\.\.\., "):
        load_mnist(DataConfig(dir=str(mnist_dir), digest="0" * 64))
    train, test = mnist_splits
    reordered = Split(train.images[::-1], train.labels[::-1])  # as another copy (TFDS's) orders the images
    assert data.content_digest(reordered, test) != digest


def test_a_recorded_tfds_version_loads_tfds_whatever_the_environment_says(tmp_path, monkeypatch):
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "idx"))
    small = Split(np.zeros((60, 28, 28), np.uint8), np.arange(60, dtype=np.uint8) % 10)
    monkeypatch.setattr(data, "load_tfds", lambda: (small, small, "3.0.1"))
    mnist = load_mnist(DataConfig(tfds_version="3.0.1"))
    assert mnist.source == "TensorFlow Datasets mnist 3.0.1" and mnist.origin.folder is None
    with pytest.raises(DataError, match="TFDS holds MNIST 3.0.1, the run used 9.9.9"):
        load_mnist(DataConfig(tfds_version="9.9.9"))
    with pytest.raises(DataError, match="idx: MNIST data folder not found"):
        load_mnist(DataConfig())  # nothing recorded: the environment's folder
