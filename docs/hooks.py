"""mkdocs hooks (mkdocs.yml ``hooks:``): the result pages' links, the docstrings' RST roles.

``docs/results/*.md`` are written for reading on GitHub, so they may link to repository files
outside ``docs/`` (``[config source](../../experiments/pretrain.py)``). Those are not pages of
the site; here they become inline code (``config source (`experiments/pretrain.py`)``), so that
``mkdocs build --strict`` keeps checking every link that does point at a page or an image.

The docstrings are Google style with RST inline markup: double backticks render as code in
Markdown, and the role of a ``:func:`name``` is dropped from the rendered page.
"""

from __future__ import annotations

import posixpath
import re

LINK = re.compile(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)\)")
ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|obj|exc):(?=<code>)")


def on_page_markdown(markdown, page, config, files):
    src = page.file.src_uri
    if not src.startswith("results/"):
        return markdown
    folder = posixpath.dirname(src)

    def replace(match):
        text, target = match.groups()
        if re.match(r"[a-z]+:", target) or target.startswith(("#", "/")):
            return match.group(0)
        path = posixpath.normpath(posixpath.join(folder, target.partition("#")[0]))
        if not path.startswith("../"):  # inside docs/: a page or a file, checked by mkdocs
            return match.group(0)
        in_repository = posixpath.normpath(posixpath.join("docs", path))
        if text.strip("`") == in_repository:
            return f"`{in_repository}`"
        return f"{text} (`{in_repository}`)"

    return LINK.sub(replace, markdown)


def on_page_content(html, page, config, files):
    return ROLE.sub("", html)
