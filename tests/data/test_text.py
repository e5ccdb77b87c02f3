"""The byte-level text corpora: documents, the split by document, packing, the builder."""

import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from jaxreg.data import text

LENGTH = 64


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("text")
    return data_dir, {split: text.load_text(split, corpus="shakespeare", sequence_length=LENGTH,
                                            data_dir=data_dir)
                      for split in ("train", "validation")}


def test_shapes_dtypes_and_range(built):
    _, splits = built
    for data in splits.values():
        tokens = data["tokens"]
        assert tokens.dtype == np.int32 and tokens.shape[1] == LENGTH + 1
        assert tokens.min() >= 0 and tokens.max() < 256
        np.testing.assert_array_equal(data["index"], np.arange(len(tokens)))


def test_windows_overlap_by_one_token_and_cover_the_stream(built):
    _, splits = built
    tokens = splits["validation"]["tokens"]
    np.testing.assert_array_equal(tokens[:-1, -1], tokens[1:, 0])
    documents = [d for i, d in enumerate(text.corpus_documents("shakespeare"))
                 if text.split_of(i) == "validation"]
    stream = np.concatenate([np.append(text.encode(t), 0) for _, t in documents])
    assert len(tokens) == (len(stream) - 1) // LENGTH
    np.testing.assert_array_equal(np.concatenate([tokens[0], tokens[1:, 1:].ravel()]),
                                  stream[:len(tokens) * LENGTH + 1])
    assert (tokens == 0).sum() >= len(documents) - 1  # the end-of-document separators


def test_split_is_by_document(built):
    data_dir, _ = built
    documents = text.corpus_documents("shakespeare")
    assert len(documents) == 38
    names = {split: [r["name"].decode() for r in text.text_source(split, corpus="shakespeare",
                                                        data_dir=data_dir)]
             for split in ("train", "validation")}
    assert not set(names["train"]) & set(names["validation"])
    assert sorted(names["train"] + names["validation"]) == [n for n, _ in documents]
    assert names["validation"] == [documents[i][0] for i in (0, 10, 20, 30)]


def test_decoded_windows_are_the_plays_text(built):
    _, splits = built
    window = text.decode(splits["train"]["tokens"][500])
    assert any(window in play for _, play in text.corpus_documents("shakespeare"))


def test_markdown_becomes_plain_text():
    markdown = ("# Twelfth Night\n\n## ACT I\n\n**DUKE ORSINO**  \nIf music be the food of "
                "love, play on;  \n_Exeunt_\n__\\[Awaking]_  \n")
    assert text.markdown_to_text(markdown) == (
        "Twelfth Night\n\nACT I\n\nDUKE ORSINO:\nIf music be the food of love, play on;\n"
        "Exeunt\n[Awaking]\n")
    plays = "".join(t for _, t in text.corpus_documents("shakespeare"))
    assert "**" not in plays and "\n#" not in plays and "\\" not in plays
    assert "HAMLET:\nTo be, or not to be: that is the question:" in plays


def test_unigram_entropy():
    train = np.array([1, 1, 2, 3])
    # add-one counts over 256 bytes: 3, 2, 2 and 1 for the other 253; total 260
    expected = -(2 * math.log(3 / 260) + math.log(2 / 260) + math.log(2 / 260)) / 4
    assert text.unigram_entropy(train) == pytest.approx(expected)
    assert text.unigram_entropy(train, [5]) == pytest.approx(-math.log(1 / 260))


def test_corpus_entropy_is_below_uniform(built):
    _, splits = built
    train, validation = splits["train"]["tokens"][:, 1:], splits["validation"]["tokens"][:, 1:]
    within = text.unigram_entropy(train)
    across = text.unigram_entropy(train, validation)
    assert 2.5 < within < math.log(256) and 2.5 < across < math.log(256)


def test_stdlib_corpus_leaves_out_tests_and_site_packages():
    documents = text.corpus_documents("stdlib")
    names = [n for n, _ in documents]
    assert "os.py" in names and "json/decoder.py" in names
    assert not any(part in {"test", "tests", "site-packages", "idlelib"}
                   for n in names for part in n.split("/")[:-1])
    assert not any(n.split("/")[-1].startswith("test_") for n in names)
    assert 5e6 < sum(len(t) for _, t in documents) < 3e7


def test_pack_and_codec():
    windows = text.pack([np.array([5, 6, 7]), np.array([8])], 2)
    np.testing.assert_array_equal(windows, [[5, 6, 7], [7, 0, 8]])  # stream 5 6 7 0 8 0
    assert text.decode(text.encode("Ay, my lord — ay.")) == "Ay, my lord — ay."


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="`split` must be one of"):
        text.load_text("test", corpus="shakespeare", data_dir=tmp_path)
    with pytest.raises(ValueError, match="`corpus` must be one of"):
        text.load_text("train", corpus="milton", data_dir=tmp_path)
    with pytest.raises(ValueError, match="`sequence_length` must be a positive integer"):
        text.load_text("train", corpus="shakespeare", sequence_length=0, data_dir=tmp_path)


def test_builds_and_reads_without_tensorflow(tmp_path):
    script = textwrap.dedent(f"""
        import importlib.util
        import sys

        assert importlib.util.find_spec("tensorflow") is None, "TensorFlow is installed"
        from jaxreg.data import text
        data = text.load_text("validation", corpus="shakespeare", sequence_length=32,
                              data_dir={os.fspath(tmp_path)!r})
        assert data["tokens"].shape[1] == 33, data["tokens"].shape
        assert "tensorflow" not in sys.modules, "TensorFlow was imported"
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
