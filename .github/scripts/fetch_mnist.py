"""Download the four canonical MNIST IDX files with TFDS's download manager into an IDX folder.

Usage: fetch_mnist.py DOWNLOAD_CACHE IDX_FOLDER. TFDS's prepared dataset is shuffled, so the tests read
the original files instead (the loader verifies them against the canonical checksums).
"""

import shutil
import sys
from pathlib import Path

import tensorflow_datasets as tfds

MIRROR = "https://storage.googleapis.com/cvdf-datasets/mnist/"
NAMES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]

cache, folder = Path(sys.argv[1]), Path(sys.argv[2])
paths = tfds.download.DownloadManager(download_dir=cache).download({n: f"{MIRROR}{n}.gz" for n in NAMES})
folder.mkdir(parents=True, exist_ok=True)
for name, path in paths.items():
    shutil.copyfile(path, folder / f"{name}.gz")
print(f"MNIST IDX files in {folder}")
