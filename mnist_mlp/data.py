"""MNIST loading: the four standard IDX files from a folder, or TensorFlow Datasets.

Images stay uint8 [N, 28, 28] here (47 MB for the training set instead of 188 MB as float32); the
training code scales each batch to [0, 1] float32 when it needs it. A folder named by `data.dir` or
$MNIST_MLP_DATA_DIR is used when set, and then nothing is downloaded.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnist_mlp import import_tensorflow_quietly
from mnist_mlp.config import DataConfig
from mnist_mlp.errors import DataError

DATA_DIR_ENV = "MNIST_MLP_DATA_DIR"
N_CLASSES = 10  # the digits 0-9
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049
# Per file: (number of records, SHA-256 of the uncompressed canonical file).
IDX_FILES = {
    "train-images-idx3-ubyte": (60000, "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
    "train-labels-idx1-ubyte": (60000, "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
    "t10k-images-idx3-ubyte": (10000, "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
    "t10k-labels-idx1-ubyte": (10000, "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
}
# TFDS fetches MNIST from here; a quick probe replaces its minutes of retries (measured: 3.5 min) offline.
TFDS_PROBE_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/t10k-labels-idx1-ubyte.gz"
OFFLINE_HINT = (
    f"set {DATA_DIR_ENV} (or data.dir in the config) to a folder holding the four MNIST IDX files "
    "(train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], "
    "t10k-labels-idx1-ubyte[.gz])"
)


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # uint8 [N, 28, 28]
    labels: np.ndarray  # uint8 [N], digits 0-9

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int | None) -> Split:
        return self if n is None else Split(self.images[:n], self.labels[:n])


@dataclass(frozen=True)
class DataOrigin:
    """Where MNIST was loaded from, completely: the IDX folder (absolute) or TFDS and its version, and a
    digest of the content as loaded, which tells apart copies that differ in any image, label or order."""

    folder: str | None  # None: TensorFlow Datasets
    tfds_version: str | None
    digest: str

    def describe(self) -> str:
        return f"IDX files in {self.folder}" if self.folder else f"TensorFlow Datasets mnist {self.tfds_version}"

    def recorded(self) -> dict[str, str | None]:
        """The config keys that pin a run to this data (written into its config.yaml)."""
        return {"data.dir": self.folder, "data.tfds_version": self.tfds_version, "data.digest": self.digest}


@dataclass(frozen=True)
class Mnist:
    train: Split
    validation: Split | None
    test: Split
    source: str  # where it came from, for the run's log
    origin: DataOrigin | None = None  # None for data made in memory (tests, the bench's synthetic set)


def load_mnist(config: DataConfig) -> Mnist:
    """Load MNIST as the config says (see idx_folder); refuse content that differs from data.digest; split."""
    folder = idx_folder(config)
    if folder:
        folder = Path(folder).expanduser().absolute()
        train, test = read_idx_folder(folder, verify=config.verify)
        origin = DataOrigin(str(folder), None, content_digest(train, test))
    else:
        train, test, version = load_tfds()
        if config.tfds_version and version != config.tfds_version:
            raise DataError(f"TFDS holds MNIST {version}, the run used {config.tfds_version}; pass --data-dir")
        origin = DataOrigin(None, version, content_digest(train, test))
    if config.digest and origin.digest != config.digest:
        raise DataError(
            f"{origin.describe()}: not the data the run was trained on (content SHA-256 {origin.digest[:12]}..., "
            f"recorded {config.digest[:12]}...); pass --data-dir with the folder it used"
        )
    return split(train, test, config, origin.describe(), origin)


def content_digest(train: Split, test: Split) -> str:
    """SHA-256 over the images and labels of train then test, as loaded (about 0.15 s for all of MNIST)."""
    digest = hashlib.sha256()
    for array in (train.images, train.labels, test.images, test.labels):
        digest.update(memoryview(np.ascontiguousarray(array)).cast("B"))
    return digest.hexdigest()


def idx_folder(config: DataConfig) -> str | None:
    """The IDX folder load_mnist reads: data.dir, else TFDS if the config recorded a TFDS version, else
    $MNIST_MLP_DATA_DIR; None: TFDS."""
    return config.dir or (None if config.tfds_version else os.environ.get(DATA_DIR_ENV)) or None


def data_source(config: DataConfig) -> str:
    """Where load_mnist would find MNIST, said without reading it (for `doctor`). Raises DataError when a
    named folder lacks one of the four files."""
    folder = idx_folder(config)
    if folder:
        path = Path(folder).expanduser()
        if not path.is_dir():
            raise DataError(f"{path}: MNIST data folder not found; {OFFLINE_HINT}")
        for name in IDX_FILES:
            _find(path, name)
        return f"IDX files in {folder}"
    if tfds_cached():
        return f"TensorFlow Datasets' prepared copy in {tfds_root()}"
    return "neither an IDX folder nor a TensorFlow Datasets copy: the first run downloads MNIST (about 11 MB)"


def split(train: Split, test: Split, config: DataConfig, source: str, origin: DataOrigin | None = None) -> Mnist:
    """Hold the last `validation_size` training images out for validation, then apply the limits."""
    validation = None
    if config.validation_size:
        cut = len(train) - config.validation_size
        validation = Split(train.images[cut:], train.labels[cut:])
        train = Split(train.images[:cut], train.labels[:cut])
    return Mnist(train.head(config.train_limit), validation, test.head(config.test_limit), source, origin)


def read_idx_folder(folder: Path, verify: bool = True) -> tuple[Split, Split]:
    """Read and check the four IDX files in `folder`: magic numbers, shapes, counts, checksums."""
    if not folder.is_dir():
        raise DataError(f"{folder}: MNIST data folder not found; {OFFLINE_HINT}")
    paths = {name: _find(folder, name) for name in IDX_FILES}  # all four present before reading any
    arrays = {name: _read_idx(paths[name], count, digest if verify else None)
              for name, (count, digest) in IDX_FILES.items()}  # fmt: skip
    train = Split(arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"])
    test = Split(arrays["t10k-images-idx3-ubyte"], arrays["t10k-labels-idx1-ubyte"])
    return train, test


def _read_idx(path: Path, count: int, digest: str | None) -> np.ndarray:
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None
    array = parse_idx(raw, str(path), is_images="images" in path.name)
    if len(array) != count:
        raise DataError(f"{path}: holds {len(array)} records, MNIST has {count}")
    if digest and hashlib.sha256(raw).hexdigest() != digest:
        raise DataError(f"{path}: content differs from the canonical MNIST file (SHA-256 mismatch)")
    if array.ndim == 1 and array.max(initial=0) > 9:
        raise DataError(f"{path}: labels must be digits 0-9, found {array.max()}")
    return array


def _find(folder: Path, name: str) -> Path:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(f"{folder}: missing {name}[.gz]; {OFFLINE_HINT}")


def parse_idx(raw: bytes, where: str, is_images: bool) -> np.ndarray:
    """Decode one IDX file: big-endian header (magic, counts, [rows, cols]) then uint8 data."""
    magic, dims = (IMAGE_MAGIC, 3) if is_images else (LABEL_MAGIC, 1)
    header = 4 * (1 + dims)
    if len(raw) < header:
        raise DataError(f"{where}: truncated: {len(raw)} bytes, shorter than the IDX header")
    found, *shape = np.frombuffer(raw[:header], dtype=">u4").tolist()
    if found != magic:
        kind = "image" if is_images else "label"
        raise DataError(f"{where}: wrong magic number {found}, expected {magic} for an IDX {kind} file")
    if is_images and shape[1:] != [28, 28]:
        raise DataError(f"{where}: images are {shape[1]}x{shape[2]}, expected 28x28")
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        state = "truncated" if len(raw) - header < expected else "has trailing bytes"
        raise DataError(f"{where}: {state}: header promises {expected} data bytes, found {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def load_tfds() -> tuple[Split, Split, str]:
    """MNIST from TensorFlow Datasets and the version of it: the local copy if prepared, else one download
    (fails fast offline).

    Whether a copy is cached is read off the TFDS folder before TensorFlow is even imported, so an offline
    machine without one gets its error in about a second.
    """
    if not tfds_cached():
        _check_online()
    import_tensorflow_quietly()  # TFDS imports TensorFlow
    from mnist_mlp.standin import split_cpu

    split_cpu()  # TFDS starts TensorFlow's runtime: a stand-in GPU must be split off before
    import absl.logging
    import tensorflow_datasets as tfds

    absl.logging.set_verbosity(absl.logging.ERROR)  # TFDS logs a warning for each folder it probes
    builder = tfds.builder("mnist")
    if not builder.is_prepared():
        try:
            builder.download_and_prepare()
        except Exception as exc:  # TFDS raises many kinds; all mean "no data"
            raise DataError(f"TFDS could not download MNIST ({type(exc).__name__}); {OFFLINE_HINT}") from None
    splits = tfds.as_numpy(builder.as_dataset(batch_size=-1, as_supervised=True))
    train, test = (Split(images[..., 0], labels.astype(np.uint8)) for images, labels in
                   (splits["train"], splits["test"]))  # fmt: skip
    return train, test, str(builder.info.version)


def tfds_cached() -> bool:
    """Whether TFDS has a prepared MNIST in its data folder ($TFDS_DATA_DIR, else ~/tensorflow_datasets)."""
    return any((tfds_root() / "mnist").glob("*/dataset_info.json"))


def tfds_root() -> Path:
    return Path(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")).expanduser()


def _check_online(timeout: float = 5.0) -> None:
    """Fail within about `timeout` seconds when TFDS's download host cannot be reached.

    The probe runs in a thread because a slow DNS lookup is not bounded by the socket timeout.
    """
    reached: list[bool] = []

    def probe() -> None:
        request = urllib.request.Request(TFDS_PROBE_URL, method="HEAD")
        try:
            urllib.request.urlopen(request, timeout=timeout).close()
            reached.append(True)
        except urllib.error.HTTPError:  # the server answered: we are online
            reached.append(True)
        except urllib.error.URLError as exc:  # a certificate problem also means the host answered
            if isinstance(exc.reason, ssl.SSLError):
                reached.append(True)
        except (OSError, ValueError):
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    if not reached:
        host = urllib.parse.urlsplit(TFDS_PROBE_URL).hostname
        raise DataError(f"MNIST is not cached and TFDS cannot reach {host}; {OFFLINE_HINT}")
