"""The generated pages of the documentation site (run by mkdocs-gen-files, see mkdocs.yml).

- ``index.md``: README.md, its links rewritten for the site (``docs/X`` to the page ``X``, the
  notebooks to their rendered pages, DESIGN.md to ``design.md``, other repository files such as
  ``experiments/*.py`` or ``benchmarks/`` to inline code, since they are not pages);
- ``design.md``: DESIGN.md, links rewritten the same way;
- ``components/``: one page per family of ``jaxreg.catalog``: every entry's paper (with its arXiv
  link), the implementation it matches, its provider, the tests that name it (found as
  ``jaxreg show NAME`` finds them) and its API documentation (mkdocstrings);
- ``api/``: one page per public subpackage;
- ``notebooks/``: the committed, executed ``.ipynb`` files, rendered by mkdocs-jupyter.

The catalog is imported from this checkout (the one mkdocstrings reads, ``paths: [.]``).
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from pathlib import Path

import mkdocs_gen_files

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # document this checkout, not another installed jaxreg

from jaxreg import catalog  # noqa: E402

API = ("losses", "regularizers", "optim", "multiobjective", "train", "diagnostics", "data",
       "models", "protocol", "checks")
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
LINK = re.compile(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)\)")


def _write(path: str, text: str) -> None:
    with mkdocs_gen_files.open(path, "w") as f:
        f.write(text)


# -- README.md and DESIGN.md -------------------------------------------------------------------

def _site_link(target: str) -> str | None:
    """Where a link of a top-level repository file points on the site (from the site root), or
    None when it points at a repository file that is not a page."""
    if re.match(r"[a-z]+:", target) or target.startswith("#"):
        return target
    path, _, anchor = target.partition("#")
    anchor = f"#{anchor}" if anchor else ""
    if path.startswith("docs/") and (ROOT / path).is_file():
        return path.removeprefix("docs/") + anchor
    if path.startswith("notebooks/") and path.endswith(".ipynb") and (ROOT / path).is_file():
        return path + anchor
    if path == "DESIGN.md":
        return "design.md" + anchor
    if path == "README.md":
        return "index.md" + anchor
    return None


def rewrite_links(markdown: str) -> str:
    """README/DESIGN links for a page at the site root: pages stay links, other repository
    files become inline code (``[source](experiments/x.py)`` -> ``source (`experiments/x.py`)``)."""
    def replace(match):
        text, target = match.groups()
        site = _site_link(target)
        if site is not None:
            return f"[{text}]({site})"
        if text.strip("`") == target or text.strip("`").rstrip("/") == target.rstrip("/"):
            return f"`{target}`"
        return f"{text} (`{target}`)"
    return LINK.sub(replace, markdown)


_write("index.md", rewrite_links((ROOT / "README.md").read_text()))
_write("design.md", rewrite_links((ROOT / "DESIGN.md").read_text()))


# -- The catalog, one page per family ------------------------------------------------------------

def family_page(family: str) -> str:
    """``components/<family>.md`` (a family ``a/b`` is the page ``components/a/b.md``)."""
    return f"components/{family}.md"


def object_path(entry: catalog.Entry) -> str:
    """The dotted path mkdocstrings documents for an entry: where jaxreg defines the function,
    or optax's public name for the ones optax provides."""
    fn = entry.fn
    module, name = fn.__module__, fn.__qualname__
    if not module.startswith("jaxreg."):
        import optax
        import optax.contrib
        for public, namespace in (("optax", optax), ("optax.contrib", optax.contrib)):
            if getattr(namespace, name, None) is fn:
                return f"{public}.{name}"
    return f"{module}.{name}"


def _test_files() -> dict[str, str]:
    return {str(p.relative_to(ROOT)): p.read_text()
            for p in sorted((ROOT / "tests").rglob("test_*.py"))}


TESTS = _test_files()


def entry_section(entry: catalog.Entry) -> str:
    paper = entry.paper
    if entry.arxiv:
        paper += f" ([arXiv:{entry.arxiv}](https://arxiv.org/abs/{entry.arxiv}))"
    tests = catalog.tests_naming(entry, TESTS)
    named = ", ".join(f"`{path}` ({n} lines)" for path, n in tests.items()) or "none name it"
    rows = [f"- **Paper:** {paper}",
            f"- **Matches:** {entry.reference}",
            f"- **Status:** provided by {entry.provider}",
            f"- **Inputs:** `{entry.inputs}`: {catalog.INPUT_KINDS[entry.inputs]}"]
    if entry.hparams:
        rows.append("- **Hyperparameters:** "
                    + ", ".join(f"`{k}={v}`" for k, v in entry.hparams.items()))
    if entry.stops_gradient:
        rows.append(f"- **No gradient through:** {entry.stops_gradient}")
    if entry.claims:
        rows.append("- **Claims:** " + "; ".join(f"`{c}` ({catalog.CLAIMS[c]})"
                                                  for c in entry.claims))
    rows.append(f"- **Tests:** {named}; every entry also runs through the catalog-driven "
                "contract suites (`tests/**/test_contract.py`)")
    return "\n".join([f"## {entry.name}", "", *rows, "", api_docs(entry)])


def api_docs(entry: catalog.Entry) -> str:
    """mkdocstrings for a function jaxreg defines; for one optax defines, its signature, summary
    and a link to optax's documentation (griffe's static analysis does not enter optax._src, a
    namespace package, so ``::: optax.adamw`` cannot be resolved)."""
    path = object_path(entry)
    if path.startswith("jaxreg."):
        return (f"::: {path}\n"
                "    options:\n"
                "      show_root_heading: true\n"
                "      show_root_full_path: true\n"
                "      heading_level: 3\n")
    doc = (inspect.getdoc(entry.fn) or "").split("\n\n")[0]
    signature = inspect.signature(entry.fn)  # without optax's long type annotations
    signature = signature.replace(
        parameters=[p.replace(annotation=inspect.Parameter.empty)
                    for p in signature.parameters.values()],
        return_annotation=inspect.Signature.empty)
    return "\n".join([f"```python\n{path}{signature}\n```", "", doc, "",
                      f"Documented by optax: [`{path}`](https://optax.readthedocs.io/en/latest/"
                      f"search.html?q={path}).", ""])


for family in catalog.FAMILIES:
    members = catalog.entries(family)
    body = [f"# {family}", "",
            f"{len(members)} entries of the `{family}` family of `jaxreg.catalog` "
            f"(`jaxreg list --family {family}`). Each one agrees with the implementation "
            "named under *Matches* on values and gradients; `jaxreg show NAME` prints the "
            "same entry in a terminal.", ""]
    body += [entry_section(e) for e in members]
    _write(family_page(family), "\n".join(body))

overview = ["# Catalog", "",
            "Every component of jaxreg, by family, with its paper, the implementation it "
            "matches, who provides it (jaxreg or optax), the tests that check it and its API. "
            "Generated from `jaxreg.catalog`; [the whole table](../catalog.md) is on one page.",
            "", "| family | entries | components |", "|---|---|---|"]
for family in catalog.FAMILIES:
    names = ", ".join(e.name for e in catalog.entries(family))
    link = family_page(family).removeprefix("components/")
    overview.append(f"| [{family}]({link}) | {len(catalog.entries(family))} | {names} |")
_write("components/index.md", "\n".join(overview) + "\n")


# -- API reference ---------------------------------------------------------------------------------

def api_path(package: str, name: str) -> str:
    """The dotted path mkdocstrings documents ``package.name`` (a name of ``__all__``) under.

    A function imported over the submodule that defines it (``jaxreg.train.grid``, the function
    from ``jaxreg/train/grid.py``) is the module to static analysis, so it is documented where
    it is defined."""
    obj = getattr(importlib.import_module(package), name)
    shadowed = (ROOT / package.replace(".", "/") / f"{name}.py").is_file()
    if shadowed and not inspect.ismodule(obj):
        return f"{obj.__module__}.{obj.__qualname__}"
    return f"{package}.{name}"


def api_page(package: str) -> str:
    """The module's docstring, then every name of its ``__all__``, each under its own heading
    (a submodule that it exports, such as ``jaxreg.train.sharding``, with its members)."""
    module = importlib.import_module(package)
    parts = [f"# `{package}`", "", f"::: {package}", "    options:", "      members: false", ""]
    for name in module.__all__:
        parts += [f"::: {api_path(package, name)}", "    options:",
                  "      show_root_heading: true", "      show_root_toc_entry: true",
                  "      show_root_full_path: false", ""]
    return "\n".join(parts)


for name in API:
    _write(f"api/{name}.md", api_page(f"jaxreg.{name}"))


# -- Notebooks, with their committed outputs ----------------------------------------------------

for notebook in NOTEBOOKS:
    _write(f"notebooks/{notebook.name}", notebook.read_text())
