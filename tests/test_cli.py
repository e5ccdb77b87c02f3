import json

import pytest

from jaxreg import catalog, cli


def test_list_prints_every_entry(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for entry in catalog.ENTRIES:
        assert f"| {entry.name} |" in out
    assert cli.main(["list", "--family", "noisy_labels"]) == 0
    out = capsys.readouterr().out
    assert "| elr |" in out and "| squentropy |" not in out


@pytest.mark.parametrize("argv, message", [
    (["run", "nope"], "unknown experiment 'nope'; available: auxiliary, contrastive, fairness"),
    (["list", "--family", "nope"], "unknown family 'nope'"),
    (["show", "generalised_cross_entropy"], "(did you mean generalized_cross_entropy"),
    (["grid", "--loss", "nope", "--set", "q=1"], "unknown component 'nope'; the catalog has:"),
    (["grid", "--loss", "generalized_cross_entropy", "--set", "q=0.3,0.7",
      "--set", "learning_rate=0.1"], "same length"),
    (["grid", "--loss", "generalized_cross_entropy", "--set", "tau=1"],
     r"unknown hyperparameter(s) ['tau'] for generalized_cross_entropy; valid: "),
    (["grid", "--loss", "generalized_cross_entropy", "--set", "q=high"], "must be numbers"),
    (["grid", "--loss", "elr", "--set", "beta=0.7"], "takes (logits, labels, example_state)"),
])
def test_bad_names_and_arguments_fail_in_one_clear_line(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_grid_command_trains_and_writes(tmp_path, capsys):
    code = cli.main(["grid", "--loss", "generalized_cross_entropy", "--set", "q=0.4,1.0",
                     "--seeds", "2", "--epochs", "2", "--out", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "| q=0.4, learning_rate=0.001 |" in out and "| q=1.0, learning_rate=0.001 |" in out
    saved = json.loads((tmp_path / "grid.json").read_text())
    acc = saved["test_accuracy"]
    assert len(acc) == 2 and len(acc[0]) == 2 and len(acc[0][0]) == 2
    assert all(0.0 <= a <= 1.0 for config in acc for seed in config for a in seed)


def test_docs_catalog_page_is_current():
    import pathlib
    page = (pathlib.Path(__file__).parents[1] / "docs" / "catalog.md").read_text()
    assert page == catalog.page(), "regenerate with: jaxreg list --page > docs/catalog.md"


def test_bench_command_writes_a_markdown_page(tmp_path, capsys):
    page = tmp_path / "bench.md"
    code = cli.main(["bench", "overhead", "--out", str(page), "--", "--d-model", "32",
                     "--layers", "1", "--length", "16", "--batch", "4", "--blocks", "2",
                     "--block", "2"])
    assert code == 0
    text = page.read_text()
    assert "## `benchmarks/overhead.py`" in text and "make_step agg(1)" in text
    assert cli.main(["bench", "speed"]) == 2
    assert "unknown benchmark(s) ['speed']" in capsys.readouterr().err


def test_show_prints_one_entry(capsys):
    assert cli.main(["show", "generalized_cross_entropy"]) == 0
    out = capsys.readouterr().out
    entry = catalog.get("generalized_cross_entropy")
    assert out.startswith("generalized_cross_entropy(logits, labels, *, q=")
    assert entry.paper in out and f"https://arxiv.org/abs/{entry.arxiv}" in out
    assert entry.reference in out and "hparams:   q=0.7" in out
    assert "tests/losses/test_noisy_labels.py" in out
    assert "Zhang & Sabuncu" in out or "Generalized Cross Entropy" in out  # the docstring
    assert cli.main(["show", "upgrad"]) == 0
    assert "claims:    non_conflicting" in capsys.readouterr().out
