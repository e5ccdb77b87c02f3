"""The documentation site builds with ``mkdocs build --strict`` (every warning an error).

mkdocs.yml and docs/gen_pages.py generate the pages (README, DESIGN, a page per catalog family,
the API reference, the notebooks with their outputs); a broken link, an unknown object or a
docstring griffe cannot parse fails the build. Needs the docs extra (``pip install -e
'.[docs]'``), skipped without it; marked ``docs``: `.ci/run` runs it after the main suite.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mkdocs")
pytest.importorskip("material")
pytest.importorskip("mkdocstrings_handlers.python")
pytest.importorskip("mkdocs_gen_files")
pytest.importorskip("mkdocs_jupyter")

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.docs
def test_site_builds_strict(tmp_path):
    site = tmp_path / "site"
    env = dict(os.environ, DISABLE_MKDOCS_2_WARNING="true", NO_MKDOCS_2_WARNING="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict",
                          "--site-dir", str(site)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-10000:]

    def page(path):
        return (site / path / "index.html").read_text()

    # the API reference and the catalog pages carry the docstrings, not just their headings
    for path, package in (("api/losses", "jaxreg.losses"),
                          ("components/multiobjective", "jaxreg.multiobjective")):
        html = page(path)
        assert f'id="{package}.' in html and "doc-signature" in html, path
    assert "arxiv.org/abs/" in page("components/multiobjective")
    # the notebooks are rendered with their committed outputs (figures included)
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        html = page(f"notebooks/{notebook.stem}")
        assert "jp-OutputArea-output" in html and "data:image/png;base64," in html, notebook
    # the README is the home page, its repository links rewritten
    home = page("")
    assert 'href="results/noisy-labels/"' in home and 'href="experiments/' not in home
