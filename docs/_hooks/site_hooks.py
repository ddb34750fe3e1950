"""MkDocs hooks of imood's documentation site (mkdocs.yml names this file under `hooks`).

- README.md is the site's home page and bench/RESULTS.md one of its pages: both live outside docs/, so they
  are added as pages here (`REPO_PAGES`).
- Links are written to work on GitHub, relative to the file that holds them (`docs/concepts.md` from README,
  `../bench/RESULTS.md` from a page of docs/); each is rewritten to the page it names in the site. A link to
  another file of the repository is checked (a missing file fails the strict build) and points to the file in
  the repository when mkdocs.yml sets `repo_url`, else it becomes its text.
- The CLI reference's generated blocks (`<!-- cli: imood COMMAND -->`) are generated afresh from the code.
- A `\\|` inside a code span of a table row is how GitHub wants a pipe there; Python-Markdown wants a plain `|`.
"""

from __future__ import annotations

import importlib.util
import logging
import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
REPO_PAGES = {"README.md": "index.md", "bench/RESULTS.md": "bench-results.md"}
PAGE_SOURCES = {page: repo for repo, page in REPO_PAGES.items()}
LINK = re.compile(r"(?<!\\)\[(?P<text>[^\]\n]*)\]\((?P<target>[^)\s]+)(?P<title>\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[ \t]*$", re.S | re.M)
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
log = logging.getLogger("mkdocs.hooks.imood")

_spec = importlib.util.spec_from_file_location("imood_cli_reference", Path(__file__).with_name("cli_reference.py"))
cli_reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cli_reference)


def on_files(files, config):
    for repo_path, uri in REPO_PAGES.items():
        if files.get_file_from_path(uri) is not None:
            raise ValueError(f"docs/{uri} would shadow {repo_path}, which is the site's {uri}")
        files.append(File.generated(config, uri, abs_src_path=str(ROOT / repo_path)))
    return files


def repo_path_of(page) -> str:
    uri = page.file.src_uri
    return PAGE_SOURCES.get(uri, f"docs/{uri}")


def rewrite_link(match: re.Match, source: str, page_dir: str, repo_url: str | None) -> str:
    target = match.group("target")
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith(("#", "/")):
        return match.group(0)
    path, _, anchor = target.partition("#")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(source), path))
    if resolved.startswith("docs/"):
        in_site = resolved.removeprefix("docs/")
    elif resolved in REPO_PAGES:
        in_site = REPO_PAGES[resolved]
    else:
        if resolved.startswith("../") or not (ROOT / resolved).exists():
            log.warning(f"{source}: the link to '{target}' names no file of the repository")
            return match.group(0)
        if repo_url:
            return f"[{match.group('text')}]({repo_url.rstrip('/')}/blob/HEAD/{resolved})"
        return match.group("text")
    relative = posixpath.relpath(in_site, page_dir or ".")
    return f"[{match.group('text')}]({relative}{'#' + anchor if anchor else ''}{match.group('title') or ''})"


def unescape_table_pipes(text: str) -> str:
    lines = []
    for line in text.split("\n"):
        if line.lstrip().startswith("|"):
            line = CODE_SPAN.sub(lambda m: m.group(0).replace(r"\|", "|"), line)
        lines.append(line)
    return "\n".join(lines)


def on_page_markdown(markdown, page, config, files):
    source = repo_path_of(page)
    if "<!-- cli: " in markdown:
        markdown = cli_reference.regenerate(markdown)
    page_dir = posixpath.dirname(page.file.src_uri)
    pieces, last = [], 0
    for fence in FENCE.finditer(markdown):  # links inside code blocks are code, not links
        pieces.append(("text", markdown[last:fence.start()]))
        pieces.append(("code", fence.group(0)))
        last = fence.end()
    pieces.append(("text", markdown[last:]))
    out = []
    for kind, text in pieces:
        if kind == "text":
            text = LINK.sub(lambda m: rewrite_link(m, source, page_dir, config.repo_url), text)
            text = unescape_table_pipes(text)
        out.append(text)
    return "".join(out)
