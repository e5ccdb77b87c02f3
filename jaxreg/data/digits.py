"""scikit-learn's bundled handwritten digits as a TensorFlow Datasets builder.

The 1,797 8x8 images of ``sklearn.datasets.load_digits`` (the UCI "Optical Recognition of
Handwritten Digits" test set) ship inside scikit-learn, so building needs no network. The
dataset is written as ``array_record`` and read back through ``tfds.data_source``, which
needs no TensorFlow.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import numpy as np
import sklearn.datasets
import sklearn.model_selection
import tensorflow_datasets as tfds
from tensorflow_datasets.core.utils import tqdm_utils

_TEST_FRACTION = 0.2
_SPLIT_SEED = 0
_SPLITS = ("train", "test")


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's 8x8 digits with a deterministic, stratified 80/20 train/test split.

    Features: ``image`` float32 ``[8, 8, 1]`` in ``[0, 1]`` (pixel counts 0..16 divided by
    16), ``label`` ``ClassLabel(10)`` and ``index``, the example's position within its split
    (``0 .. n-1``), so that per-example state (ELR's targets, PS-KD's soft labels) can be a
    buffer indexed by it. The split is ``sklearn.model_selection.train_test_split`` with
    ``test_size=0.2``, ``stratify=labels`` and ``random_state=0``: 1,437 train and 360 test
    examples. Within each split the examples keep the order ``train_test_split`` returns,
    and the records are written unshuffled, so ``source[i]["index"] == i``.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release: stratified 80/20 split (random_state=0), images / 16.",
    }

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description="scikit-learn's bundled 8x8 handwritten digits (UCI optdigits test set).",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.float32),
                "label": tfds.features.ClassLabel(num_classes=10),
                "index": tfds.features.Scalar(dtype=np.int64),
            }),
            supervised_keys=("image", "label"),
            disable_shuffling=True,  # Keeps record i of a split at index i.
            homepage="https://scikit-learn.org/stable/modules/generated/"
                     "sklearn.datasets.load_digits.html",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # The data ship with scikit-learn.
        images, labels = _split_arrays()
        return {split: self._generate_examples(images[split], labels[split])
                for split in _SPLITS}

    def _generate_examples(self, images, labels):
        for index, (image, label) in enumerate(zip(images, labels)):
            yield index, {"image": image, "label": int(label), "index": index}


def _split_arrays() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Returns ``({split: images [N, 8, 8, 1] float32}, {split: labels [N]})``."""
    digits = sklearn.datasets.load_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]
    train_x, test_x, train_y, test_y = sklearn.model_selection.train_test_split(
        images, digits.target, test_size=_TEST_FRACTION, stratify=digits.target,
        random_state=_SPLIT_SEED)
    return {"train": train_x, "test": test_x}, {"train": train_y, "test": test_y}


def default_data_dir() -> Path:
    """``$JAXREG_DATA_DIR`` if set, else ``~/.cache/jaxreg/tensorflow_datasets``."""
    env = os.environ.get("JAXREG_DATA_DIR")
    return Path(env) if env else Path.home() / ".cache" / "jaxreg" / "tensorflow_datasets"


@contextlib.contextmanager
def _quiet():
    """Hides tfds' progress bars and INFO/WARNING log lines, restoring both afterwards."""
    logger = logging.getLogger("absl")
    level = logger.level
    bars_shown = getattr(tqdm_utils, "_active", True)
    logger.setLevel(logging.ERROR)
    tfds.display_progress_bar(False)
    try:
        yield
    finally:
        tfds.display_progress_bar(bars_shown)
        logger.setLevel(level)


def data_source(split: str = "train", *, data_dir: str | os.PathLike | None = None):
    """Returns the random-access ``tfds`` source of one split, building it on first use.

    Args:
        split: ``"train"`` (1,437 examples) or ``"test"`` (360).
        data_dir: where the prepared dataset lives; defaults to :func:`default_data_dir`.

    Returns:
        An ``ArrayRecordDataSource``: ``len(source)``, ``source[i]`` and
        ``source.__getitems__(indices)`` give dicts with ``image``, ``label`` and ``index``.
    """
    if split not in _SPLITS:
        raise ValueError(f"`split` must be one of {_SPLITS}, got {split!r}.")
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    with _quiet():
        return tfds.data_source(
            SklearnDigits.name, split=split, data_dir=os.fspath(data_dir),
            builder_kwargs={"file_format": "array_record"},
            download_and_prepare_kwargs={"download_config": tfds.download.DownloadConfig(
                try_download_gcs=False)})


def load_digits(split: str = "train", *, train_size: int | None = None, seed: int = 0,
                data_dir: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """Reads a whole split of :class:`SklearnDigits` into memory.

    Args:
        split: ``"train"`` or ``"test"``.
        train_size: ``None`` for the builder's stratified 1437 / 360 split; else the 1797
            digits are split anew, stratified by class with ``seed``, into ``train_size``
            training examples and the rest for testing (e.g. 1000 / 797).
        seed: the seed of that split.
        data_dir: where the prepared dataset lives; defaults to :func:`default_data_dir`.

    Returns:
        ``{"image": float32 [N, 8, 8, 1], "label": int32 [N], "index": int32 [N]}`` ordered
        by ``index`` (so ``index == arange(N)``).
    """
    if split not in _SPLITS:
        raise ValueError(f"`split` must be one of {_SPLITS}, got {split!r}")
    if train_size is not None:
        return _resplit(split, train_size, seed, data_dir)
    source = data_source(split, data_dir=data_dir)
    examples = source.__getitems__(list(range(len(source))))
    data = {
        "image": np.stack([e["image"] for e in examples]).astype(np.float32),
        "label": np.asarray([e["label"] for e in examples], dtype=np.int32),
        "index": np.asarray([e["index"] for e in examples], dtype=np.int32),
    }
    order = np.argsort(data["index"], kind="stable")
    return {key: value[order] for key, value in data.items()}


def load_digits_splits(*, train_size: int | None = None, seed: int = 0,
                       data_dir: str | os.PathLike | None = None
                       ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(train, test)``: both splits of :func:`load_digits`, with the same ``train_size``
    and ``seed`` (``train_size`` None or 0: the builder's 1437 / 360 split)."""
    kw = dict(train_size=train_size or None, seed=seed, data_dir=data_dir)
    return load_digits("train", **kw), load_digits("test", **kw)


def _resplit(split: str, train_size: int, seed: int, data_dir) -> dict[str, np.ndarray]:
    both = [load_digits(name, data_dir=data_dir) for name in _SPLITS]
    pooled = {key: np.concatenate([part[key] for part in both]) for key in ("image", "label")}
    total = len(pooled["label"])
    if not isinstance(train_size, (int, np.integer)) or not 10 <= train_size <= total - 10:
        raise ValueError(f"`train_size` must be an integer in [10, {total - 10}] (both splits "
                         f"need every class), got {train_size!r}")
    train_rows, test_rows = sklearn.model_selection.train_test_split(
        np.arange(total), train_size=int(train_size), stratify=pooled["label"],
        random_state=seed)
    rows = np.sort(train_rows if split == "train" else test_rows)
    return {"image": pooled["image"][rows], "label": pooled["label"][rows],
            "index": np.arange(len(rows), dtype=np.int32)}
