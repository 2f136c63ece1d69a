"""MNIST and Fashion-MNIST, looked for in a fixed order of places, always saying which was used.

The order, first match wins:

1. the directory passed as `root` (the example's `--data-dir`), else the one named by the
   environment variable TINYNORM_DATA. A directory you name must hold the files: a missing one
   is an error, never a silent fall-through to some other data;
2. the user cache, `$XDG_CACHE_HOME/tinynorm/<data set>/` (default `~/.cache/tinynorm/...`);
3. a download from the public mirrors into that cache, MD5-verified and written atomically.
   Skipped offline (`download=False`, as the examples' `--offline` passes, or the environment
   variable TINYNORM_OFFLINE=1), and for a day after a failed try: the failure is remembered in
   `download-failed.json` in that cache folder (remove it to try again sooner);
4. Fashion-MNIST only: the Debian package `dataset-fashion-mnist` (/usr/share/datasets/...);
5. MNIST only: mnist-lite, bundled inside this package (10,000 real training digits and the
   official 10,000-image test set; see mnist_lite/PROVENANCE.md).

Each data set prints one line such as

    data: MNIST train (10,000 images) from .../mnist_lite (bundled mnist-lite: ...)

and keeps the same information in its `source` attribute.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from os import PathLike
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..files import atomic_write
from .download import DEFAULT_TIMEOUT, ChecksumError, DownloadError, download
from .idx import IDXError, read_idx

ENV_VAR = "TINYNORM_DATA"
OFFLINE_VAR = "TINYNORM_OFFLINE"  # set to 1: never download
FAILURE_FILE = "download-failed.json"  # in a data set's cache folder: the last failed download
RETRY_AFTER = timedelta(hours=24)  # how long a failed download is not tried again
BUNDLED_DIR = Path(__file__).parent / "mnist_lite"

Transform = Callable[[np.ndarray], np.ndarray]


def default_cache_dir() -> Path:
    """tinynorm's cache: `$XDG_CACHE_HOME/tinynorm`, or `~/.cache/tinynorm` when that is unset."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tinynorm"


@dataclass(frozen=True)
class Source:
    """Where a data set came from: `kind` is root, env, cache, download, system or bundled."""

    kind: str
    directory: Path
    note: str  # the explanation printed in parentheses


class DataNotFoundError(FileNotFoundError):
    """No source holds the data set, or the directory the user named lacks its files."""


class Normalize:
    """uint8 images (..., H, W) -> float32 (..., 1, H, W): scaled to [0, 1], then standardized."""

    def __init__(self, mean: float, std: float):
        self.mean = mean
        self.std = std

    def __call__(self, images: np.ndarray) -> np.ndarray:
        x = images.astype(np.float32)  # in-place float32 arithmetic from here: no float64 copies
        x /= 255
        x -= self.mean
        x /= self.std
        return x[..., np.newaxis, :, :]

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"


def _offline_reason(download: bool) -> str | None:
    """Why the full set is not to be downloaded: `download` is False (`--offline`) or
    $TINYNORM_OFFLINE is set (other than to 0); None when downloading is allowed."""
    value = os.environ.get(OFFLINE_VAR, "").strip()
    if value not in ("", "0"):
        return f"offline (${OFFLINE_VAR}={value}), so the full set was not downloaded"
    if not download:
        return "offline (download=False, as with --offline), so the full set was not downloaded"
    return None


def _recent_failure(marker: Path) -> str | None:
    """Why the full set is not downloaded, if `marker` records a failure less than RETRY_AFTER
    ago; None if not, or if the file is missing or corrupt."""
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
        failed_at = datetime.fromisoformat(record["failed_at"]).astimezone(timezone.utc)
        reason = record["reason"]
        age = datetime.now(timezone.utc) - failed_at
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if not isinstance(reason, str) or not timedelta(0) <= age < RETRY_AFTER:
        return None
    return (
        f"the full set could not be downloaded (tried {failed_at:%Y-%m-%d %H:%M} UTC: {reason}); "
        f"no new try before {failed_at + RETRY_AFTER:%Y-%m-%d %H:%M} UTC unless you remove "
        f"{marker}"
    )


def _remember_failure(marker: Path, reason: str) -> bool:
    """Record in `marker` that a download failed now, and why; False if it cannot be written."""
    record = {"failed_at": datetime.now(timezone.utc).isoformat(), "reason": reason}
    try:
        with atomic_write(marker, "w", encoding="utf-8") as f:
            json.dump(record, f)
    except OSError:
        return False
    return True


def _forget_failure(marker: Path) -> None:
    """Remove `marker`, if there is one and the cache folder allows it."""
    with contextlib.suppress(OSError):
        marker.unlink(missing_ok=True)


def _find(directory: Path, name: str) -> Path | None:
    """`directory/name`, or the same file without its `.gz` suffix (gunzipped), if either exists."""
    for candidate in (directory / name, directory / name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


class IDXImageDataset:
    """A labelled set of 28x28 gray images stored as four IDX files (the MNIST layout).

    Subclasses only fill in the class attributes below. `images` is uint8 (N, 28, 28) and
    `labels` int64 (N,); indexing with an integer or an index array gives
    `(transform(images[i]), labels[i])`. The default transform "standard" is `Normalize` with
    the data set's mean and standard deviation, giving float32 (..., 1, 28, 28); pass None for
    the raw uint8 images or any function of a uint8 array.
    """

    name: ClassVar[str]  # for messages, e.g. "MNIST"
    cache_name: ClassVar[str]  # the folder in the cache, e.g. "mnist"
    mirrors: ClassVar[tuple[str, ...]]  # base addresses that serve all four files
    md5: ClassVar[dict[str, str]]  # file name -> published MD5 of the .gz file
    mean: ClassVar[float]  # of the training pixels scaled to [0, 1]
    std: ClassVar[float]
    classes: ClassVar[tuple[str, ...]]
    system_dir: ClassVar[Path | None] = None  # a system-wide copy of the full set
    system_note: ClassVar[str] = ""  # where that copy comes from
    bundled_dir: ClassVar[Path | None] = None  # a small copy shipped inside the package
    bundled_note: ClassVar[dict[bool, str]] = {}  # train? -> what the bundled split holds
    full_sizes: ClassVar[dict[bool, int]] = {True: 60_000, False: 10_000}  # train? -> images

    def __init__(
        self,
        root: str | PathLike[str] | None = None,
        train: bool = True,
        download: bool = True,
        transform: Transform | str | None = "standard",
        *,
        cache_dir: str | PathLike[str] | None = None,
        mirrors: tuple[str, ...] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        verbose: bool = True,
    ):
        self.train = train
        self.files = (
            ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
            if train
            else ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
        )
        cache = (default_cache_dir() if cache_dir is None else Path(cache_dir)) / self.cache_name
        mirrors = self.mirrors if mirrors is None else mirrors
        self.source = self._resolve(root, cache, download, mirrors, timeout)
        self.images, self.labels = self._load(self.source.directory)
        self.transform = Normalize(self.mean, self.std) if transform == "standard" else transform
        if verbose:
            split = "train" if train else "test"
            print(
                f"data: {self.name} {split} ({len(self):,} images) from "
                f"{self.source.directory} ({self.source.note})"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images = self.images[index]
        return (self.transform(images) if self.transform else images), self.labels[index]

    def normalized(self) -> np.ndarray:
        """All images as float32 (N, 1, 28, 28), standardized with the data set's mean and std."""
        return Normalize(self.mean, self.std)(self.images)

    def __repr__(self) -> str:
        split = "train" if self.train else "test"
        return f"{type(self).__name__}({split}, {len(self)} images, source={self.source.kind})"

    # ---- finding the files ------------------------------------------------------------------
    def _resolve(
        self,
        root: str | PathLike[str] | None,
        cache: Path,
        download: bool,
        mirrors: tuple[str, ...],
        timeout: float,
    ) -> Source:
        """The first source, in the order of the module docstring, that holds both files."""
        if root is not None:
            return self._named(Path(root), "root", "the directory given as root / --data-dir")
        if os.environ.get(ENV_VAR):
            return self._named(Path(os.environ[ENV_VAR]), "env", f"named by ${ENV_VAR}")
        marker = cache / FAILURE_FILE
        if self._has_files(cache):
            if all(_find(cache, name) for name in self.md5):  # both splits: nothing left to fetch
                _forget_failure(marker)
            return Source("cache", cache, "user cache")
        why = _offline_reason(download) or _recent_failure(marker)
        if why is None:
            try:
                used = self._download(cache, mirrors, timeout)
            except OSError as err:  # DownloadError, or a cache folder that cannot be written
                why = f"the full set could not be downloaded: {err}"
                if _remember_failure(marker, str(err)):
                    hours = RETRY_AFTER / timedelta(hours=1)
                    why += f"; no new try for {hours:g} h unless you remove {marker}"
            else:
                _forget_failure(marker)
                return Source("download", cache, f"downloaded from {used}, md5 verified")
        if self.system_dir is not None and self._has_files(self.system_dir):
            return Source("system", self.system_dir, f"{self.system_note}; {why}")
        if self.bundled_dir is not None:
            note = f"bundled mnist-lite: {self.bundled_note[self.train]}; {why}"
            return Source("bundled", self.bundled_dir, note)
        hint = f"; nothing in {self.system_dir} ({self.system_note})" if self.system_dir else ""
        raise DataNotFoundError(
            f"{self.name}: no data found: nothing in the cache {cache}; {why}{hint}. Pass root= "
            f"(--data-dir) or set ${ENV_VAR} to a directory holding {' and '.join(self.files)}"
        )

    def _has_files(self, directory: Path) -> bool:
        return all(_find(directory, name) for name in self.files)

    def _named(self, directory: Path, kind: str, note: str) -> Source:
        """A directory the user named: it must hold the files."""
        if not directory.is_dir():
            raise DataNotFoundError(f"{self.name}: {directory} ({note}) is not a directory")
        missing = [name for name in self.files if _find(directory, name) is None]
        if missing:
            raise DataNotFoundError(
                f"{self.name}: {directory} ({note}) has no {' and no '.join(missing)} "
                "(gzipped or not)"
            )
        return Source(kind, directory, note)

    def _download(self, cache: Path, mirrors: tuple[str, ...], timeout: float) -> str:
        """Fetch the files missing from `cache`, each from the first mirror that serves it
        verified; returns the mirror(s) used, or raises `DownloadError` with every failure."""
        used: list[str] = []
        for name in self.files:
            if _find(cache, name):
                continue
            errors = []
            for base in mirrors:
                try:
                    download(base.rstrip("/") + "/" + name, cache / name, self.md5[name], timeout)
                    used.append(base)
                    break
                except (OSError, ChecksumError) as err:
                    errors.append(str(err))
            else:
                raise DownloadError("; ".join(errors) or "no mirrors configured")
        return ", ".join(dict.fromkeys(used))

    # ---- reading them -----------------------------------------------------------------------
    def _load(self, directory: Path) -> tuple[np.ndarray, np.ndarray]:
        """Read and check the images and labels in `directory`."""
        images_path, labels_path = (_find(directory, name) for name in self.files)
        images, labels = read_idx(images_path), read_idx(labels_path)
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
            raise IDXError(
                f"{images_path}: expected uint8 images of shape (N, 28, 28), "
                f"found {images.dtype} {images.shape}"
            )
        if labels.dtype != np.uint8 or labels.ndim != 1:
            raise IDXError(
                f"{labels_path}: expected a 1-d uint8 array of labels, "
                f"found {labels.dtype} {labels.shape}"
            )
        if len(images) != len(labels):
            raise IDXError(
                f"{images_path} holds {len(images):,} images but {labels_path} holds "
                f"{len(labels):,} labels"
            )
        if labels.size and labels.max() >= len(self.classes):
            raise IDXError(
                f"{labels_path}: label {labels.max()} out of range for {len(self.classes)} classes"
            )
        if self.source.kind == "system" and len(images) != self.full_sizes[self.train]:
            raise IDXError(
                f"{images_path}: {len(images):,} images, expected the full set's "
                f"{self.full_sizes[self.train]:,}"
            )
        return images, labels.astype(np.int64)


class MNIST(IDXImageDataset):
    """Handwritten digits 0-9 (LeCun, Cortes and Burges; CC BY-SA 3.0).

    Falls back to the bundled mnist-lite, so it always loads, even offline.
    """

    name = "MNIST"
    cache_name = "mnist"
    mirrors = (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    )
    md5: ClassVar[
        dict[str, str]
    ] = {  # the official files' sums, as listed in mnist_lite/PROVENANCE.md
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    }
    mean, std = 0.1307, 0.3081
    classes = tuple("0123456789")
    bundled_dir = BUNDLED_DIR
    bundled_note: ClassVar[dict[bool, str]] = {
        True: "10,000 training digits",
        False: "the official 10,000 test images",
    }


class FashionMNIST(IDXImageDataset):
    """Zalando's Fashion-MNIST: 28x28 gray images of 10 kinds of clothing (MIT licence).

    There is no bundled copy; offline it needs the Debian package dataset-fashion-mnist.
    """

    name = "Fashion-MNIST"
    cache_name = "fashion-mnist"
    mirrors = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
    md5: ClassVar[
        dict[str, str]
    ] = {  # the upstream files' sums, as published by the Fashion-MNIST project
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    }
    mean, std = 0.2860, 0.3530
    classes = (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    )  # fmt: skip
    # Debian recompressed the files, so their .gz sums differ from upstream's: the content is
    # checked instead (IDX magic, dimensions, length, and the full set's image count).
    system_dir = Path("/usr/share/datasets/fashion-mnist")
    system_note = "Debian package dataset-fashion-mnist"
