"""The documentation cannot rot: README.md and docs/ are checked against the code they describe.

- Every shell command a reader would type sits in a fenced `console` block, one command per `$ ` line (a trailing
  `\\` continues it; other lines are output). The `imood` commands of every block are run here, in process, in one
  folder prepared like the demo's (digits data, two runs trained for 2 epochs and scored). A block that cannot run
  here carries `<!-- not run: REASON -->` on the line above it; its `imood` commands are still checked against the
  command line (subcommands and options must exist), its `make` targets against the Makefile, its scripts on disk.
- The CLI reference's generated blocks equal what the code gives now, and every command has one.
- Every relative link of README.md and docs/ names a file that exists and, with an anchor, a heading of it (GitHub's
  anchors, which the site uses too); README.md stays a landing page of at most 250 lines.
- Repository paths in code spans exist, and `imood_cli...` names, `api.` names and imports resolve.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
FILES = [ROOT / "README.md"] + sorted(p for p in DOCS.rglob("*.md") if "_hooks" not in p.parts)
NOT_RUN = re.compile(r"^\s*<!--\s*not run:\s*(?P<reason>.*?)\s*-->\s*$")
SHELLS = {"bash", "sh", "shell", "zsh", "fish", "shell-session", "sh-session", "powershell", "ps1", "bat", "cmd"}
MARKDOWN = MarkdownIt("commonmark").enable("table")


def reference_module():
    spec = importlib.util.spec_from_file_location("imood_cli_reference", DOCS / "_hooks" / "cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    commands: list[str]
    not_run: str | None  # the reason, for a block that is not run

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def commands_of(content: str) -> list[str]:
    commands, current = [], None
    for line in content.split("\n"):
        if current is not None:
            current += " " + line.strip()
        elif line.startswith("$ "):
            current = line[2:].strip()
        else:
            continue
        if current.endswith("\\"):
            current = current[:-1].rstrip()
        else:
            commands.append(current)
            current = None
    if current is not None:
        commands.append(current)
    return commands


def tokens_of(path: Path):
    return MARKDOWN.parse(path.read_text(encoding="utf-8"))


def blocks_of(path: Path) -> list[Block]:
    lines = path.read_text(encoding="utf-8").split("\n")
    blocks = []
    for token in tokens_of(path):
        if token.type == "fence" and token.info.strip().split(" ")[0] == "console":
            start = token.map[0]
            above = NOT_RUN.match(lines[start - 1]) if start > 0 else None
            blocks.append(Block(path, start + 1, commands_of(token.content), above.group("reason") if above else None))
    return blocks


BLOCKS = [b for path in FILES for b in blocks_of(path)]
RUN = [b for b in BLOCKS if b.not_run is None]


def words_of(command: str) -> tuple[list[str], str | None]:
    """(the words of a command line, the file a final `> FILE` sends its output to)."""
    words = shlex.split(command, comments=True)
    if ">" in words:
        at = words.index(">")
        return words[:at], words[at + 1]
    return words, None


def imood_args(words: list[str]) -> list[str] | None:
    """The arguments of `imood ...`, `python -m imood_cli ...` or `torchrun ... -m imood_cli ...`, else None."""
    if words and words[0] == "imood":
        return words[1:]
    for i in range(len(words) - 1):
        if words[i] == "-m" and words[i + 1] == "imood_cli" and words[0] in ("python", "python3", "torchrun"):
            return words[i + 2:]
    return None


# ------------------------------------------------------------------ the shape of the docs


def test_readme_is_a_landing_page():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= 250, f"README.md has {lines} lines: move the detail into docs/ and link to it"


def test_shell_commands_sit_in_console_blocks():
    problems = []
    for path in FILES:
        for token in tokens_of(path):
            where = f"{path.relative_to(ROOT)}:{token.map[0] + 1 if token.map else '?'}"
            if token.type == "code_block":
                problems.append(f"{where}: an indented code block; fence it with a language (console for commands)")
            elif token.type == "fence":
                lang = token.info.strip().split(" ")[0]
                if not lang:
                    problems.append(f"{where}: a fenced block without a language")
                elif lang in SHELLS:
                    problems.append(f"{where}: a {lang} block; shell commands go in console blocks ($ before each)")
    for block in BLOCKS:
        if not block.commands:
            problems.append(f"{block.id}: a console block without a `$ ` command line")
        if block.not_run is not None and not block.not_run:
            problems.append(f"{block.id}: `not run:` without a reason")
    assert not problems, "\n".join(problems)


def test_blocks_not_run_name_real_commands_options_and_files():
    reference = reference_module()
    root = reference.root_command()
    makefile = (ROOT / "Makefile").read_text()
    problems = []
    for block in BLOCKS:
        if block.not_run is None:
            continue
        for command in block.commands:
            words, _ = words_of(command)
            args = imood_args(words)
            if args is not None:
                problems += [f"{block.id}: {command}: {p}" for p in command_line_problems(root, args)]
            elif words and words[0] == "make":
                problems += [f"{block.id}: no make target {t!r}" for t in words[1:]
                             if "=" not in t and not re.search(rf"^{re.escape(t)}:", makefile, re.M)]
            elif words and (words[0] in ("bash", "sh") or words[0].endswith(("python", "python3"))) and \
                    len(words) > 1 and not words[1].startswith("-"):
                if not (ROOT / words[1]).is_file():
                    problems.append(f"{block.id}: {words[1]} does not exist")
    assert not problems, "\n".join(problems)


def command_line_problems(root, args: list[str]) -> list[str]:
    command, i = root, 0
    while hasattr(command, "commands") and i < len(args) and not args[i].startswith("-"):
        if args[i] not in command.commands:
            return [f"imood has no command {' '.join(args[:i + 1])!r}"]
        command, i = command.commands[args[i]], i + 1
    known = {"--help", "-h"}
    for param in command.params:
        known.update(param.opts)
        known.update(param.secondary_opts)
    problems = []
    for word in args[i:]:
        if word.startswith("--") and word != "--":
            if word.split("=")[0] not in known:
                problems.append(f"no option {word.split('=')[0]}")
        elif re.match(r"^-[A-Za-z]", word) and word not in known and word[:2] not in known:
            problems.append(f"no option {word}")
    return problems


# ------------------------------------------------------------------ every command that can run here, runs


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, cli_code):
    """A folder like the demo's: digits prepared, a baseline and an ImOOD run trained briefly and scored."""
    import os

    folder = tmp_path_factory.mktemp("docs")
    before = os.getcwd()
    os.chdir(folder)
    try:
        setup = [["data", "prepare", "digits", "--drp", "data"]]
        for name, metric, tau in (("digits-baseline", "oe", "0"), ("digits-imood", "ada_oe", "1.0")):
            setup.append(["train", "--ds", "digits", "--drp", "data", "--srp", "runs", "--name", name,
                          "--ood-metric", metric, "--logit-adjust", tau, "--aux-ood-loss", "none", "--epochs", "2"])
            setup.append(["score", f"runs/{name}", "-m", "msp,energy,ada_msp,ada_energy"])
        for argv in setup:
            assert cli_code(argv) == 0, f"imood {' '.join(argv)} failed"
    finally:
        os.chdir(before)
    return folder


@pytest.mark.parametrize("block", RUN, ids=[b.id for b in RUN])
def test_console_block_runs(block, workdir, monkeypatch, cli):
    monkeypatch.chdir(workdir)
    for command in block.commands:
        words, out_file = words_of(command)
        if not words:  # a comment line
            continue
        args = imood_args(words)
        assert args is not None, (f"{block.id}: {command!r} is not an imood command, which this test can run: "
                                  "mark the block `<!-- not run: REASON -->`")
        code, out, err = cli(args)
        assert code == 0, f"{block.id}: {command!r} exited {code}:\n{err[-2000:]}"
        if out_file:
            (workdir / out_file).write_text(out)


def test_some_blocks_run_and_every_other_one_says_why():
    assert len(RUN) >= 5, [b.id for b in RUN]
    assert all(b.not_run for b in BLOCKS if b not in RUN)


# ------------------------------------------------------------------ the CLI reference is the code's


def test_cli_reference_is_generated_from_the_code():
    reference = reference_module()
    stale = [p.relative_to(ROOT) for p in FILES
             if p.is_relative_to(DOCS) and reference.regenerate(p.read_text(encoding="utf-8")) !=
             p.read_text(encoding="utf-8")]
    assert not stale, (f"the CLI reference in {', '.join(map(str, stale))} differs from the code: run "
                       ".venv/bin/python docs/_hooks/cli_reference.py and commit the result")


def test_every_command_has_a_reference_block():
    reference = reference_module()
    documented = {m.group("command") for p in FILES for m in reference.BLOCK.finditer(p.read_text(encoding="utf-8"))}

    def walk(command, words):
        yield " ".join(words)
        for name, sub in getattr(command, "commands", {}).items():
            if not getattr(sub, "hidden", False):
                yield from walk(sub, words + [name])

    missing = sorted(set(walk(reference.root_command(), ["imood"])) - documented)
    assert not missing, f"no <!-- cli: ... --> block in docs/cli/ for {missing}"


# ------------------------------------------------------------------ links


def slug(text: str) -> str:
    """GitHub's heading anchor (pymdownx.slugs.slugify(case="lower"), which mkdocs.yml gives the site)."""
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


@functools.cache
def anchors(path: Path) -> set[str]:
    found, seen = set(), {}
    tokens = tokens_of(path)
    for i, token in enumerate(tokens):
        if token.type == "heading_open":
            text = "".join(c.content for c in tokens[i + 1].children if c.type in ("text", "code_inline"))
            base = slug(text)
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(path: Path):
    for token in tokens_of(path):
        for child in token.children or []:
            if child.type == "link_open":
                yield child.attrs["href"]
            elif child.type == "image":
                yield child.attrs["src"]


def test_every_relative_link_resolves():
    problems = []
    for path in FILES:
        for href in links(path):
            if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", href):
                continue
            where = f"{path.relative_to(ROOT)}: {href}"
            target, _, anchor = href.partition("#")
            file = (path.parent / target).resolve() if target else path
            if not file.is_relative_to(ROOT) or not file.exists():
                problems.append(f"{where}: no such file")
            elif anchor and (file.suffix != ".md" or anchor not in anchors(file)):
                problems.append(f"{where}: no heading with that anchor")
    assert not problems, "\n".join(problems)


def test_every_page_is_in_the_site():
    config = (ROOT / "mkdocs.yml").read_text()
    nav = set(re.findall(r"([\w./-]+\.md)\s*$", config[config.index("\nnav:"):], re.M))
    pages = {str(p.relative_to(DOCS)) for p in FILES if p.is_relative_to(DOCS)}
    assert pages - nav == set(), f"pages missing from the nav of mkdocs.yml: {sorted(pages - nav)}"
    assert nav - pages <= {"index.md", "bench-results.md"}, sorted(nav - pages)  # README.md, bench/RESULTS.md


# ------------------------------------------------------------------ the code the docs name exists


def test_named_files_modules_and_imports_exist():
    import importlib

    def resolves(dotted: str) -> bool:
        parts = dotted.split(".")
        for cut in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            try:
                for name in parts[cut:]:
                    obj = getattr(obj, name)
            except AttributeError:
                return False
            return True
        return False

    problems = []
    for path in FILES:
        text = path.read_text(encoding="utf-8")
        where = path.relative_to(ROOT)
        for file in set(re.findall(r"`((?:imood_cli|tests|bench|examples|plugins|docs)/[\w./-]*)`", text)):
            if not (ROOT / file).exists():
                problems.append(f"{where}: `{file}` does not exist")
        for dotted in set(re.findall(r"\b(imood_cli(?:\.[A-Za-z_]\w*)+)", text)):
            if not resolves(dotted):
                problems.append(f"{where}: {dotted} does not resolve")
        for name in set(re.findall(r"(?<![\w./])api\.(?!md\b)([A-Za-z_]\w*)", text)):  # `from imood_cli import api`
            if not resolves(f"imood_cli.api.{name}"):
                problems.append(f"{where}: api.{name} does not resolve")
        for module, names in re.findall(r"^\s*from (imood_cli[\w.]*) import ([\w, ]+)$", text, re.M):
            for name in (n.strip() for n in names.split(",")):
                if not resolves(f"{module}.{name}"):
                    problems.append(f"{where}: from {module} import {name} fails")
    assert not problems, "\n".join(problems)
