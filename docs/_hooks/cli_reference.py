"""The CLI reference, generated from the code: the Typer app `imood_cli.cli.app.app` (its click commands) and the
`TrainConfig` option declarations of `imood_cli.engine.training.config`.

A page of docs/cli/ holds hand-written prose and generated blocks between two markers:

    <!-- cli: imood score -->
    ...generated: usage, description, arguments and options of `imood score`...
    <!-- /cli -->

`python docs/_hooks/cli_reference.py` rewrites every block in the files under docs/ (`--check`: only say which
are stale, exit code 1); the MkDocs hook `docs/_hooks/site.py` regenerates them while building, and
tests/docs/test_docs.py fails when a committed block differs from what the code gives, so the reference cannot drift.
"""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"(<!-- cli: (?P<command>[^>]*?) -->\n)(?P<body>.*?)(<!-- /cli -->)", re.S)


def root_command():
    """The click command tree of `imood`, as `imood --help` shows it."""
    import typer

    from imood_cli.cli import app as app_module

    command = typer.main.get_command(app_module.app)
    plain = getattr(app_module, "_plain_argument_help", None)  # what `imood` does to its help before printing
    if plain is not None:
        plain(command)
    return command


def find(words: list[str]):
    """(click command, click context) of `imood WORDS...`."""
    import click

    command = root_command()
    ctx = click.Context(command, info_name="imood")
    for word in words:
        command = command.commands[word]
        ctx = click.Context(command, info_name=word, parent=ctx)
    return command, ctx


def cell(text: str) -> str:
    """Text for a table cell: pipes escaped (inside code spans too, as GitHub wants; the site's hook unescapes
    those), `<` and `*` escaped outside code spans so that `<dataset>` and `*.png` show as written."""
    parts = text.split("`")
    for i, part in enumerate(parts):
        if i % 2 == 0:
            part = part.replace("<", "&lt;").replace("*", r"\*")
        parts[i] = part.replace("|", r"\|")
    return "`".join(parts)


def prose(text: str) -> str:
    parts = text.split("`")
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("<", "&lt;").replace("*", r"\*")
    return "`".join(parts)


def code(text: str) -> str:
    return f"`{text}`" if text else ""


def paragraphs(help_text: str | None) -> list[str]:
    text = inspect.cleandoc(help_text or "").split("\f")[0]
    return [" ".join(p.replace("\b", "").split()) for p in re.split(r"\n\s*\n", text) if p.strip()]


def split_extras(help_text: str, raw: str) -> tuple[str, str, list[str]]:
    """(meaning, default, other notes) from a parameter's help record.

    A default written into the help text itself ("... [default: RUN/scores]") is taken as it is; click's own
    extras, appended after the text ("  [default: 512; x>=1]" or "[required]"), are split into the default and
    the rest.
    """
    raw = " ".join((raw or "").split())
    help_text = " ".join(help_text.split())
    extras = help_text[len(raw):].strip() if help_text.startswith(raw) else ""
    meaning, default = raw, ""
    manual = re.search(r"\s*\[default: (?P<d>[^\[\]]*)\]$", meaning)
    if manual:
        default, meaning = manual.group("d"), meaning[:manual.start()]
    notes = []
    for group in re.findall(r"\[([^\[\]]*)\]", extras):
        for piece in group.split("; "):
            if piece.startswith("default: ") and not default:
                default = piece.removeprefix("default: ")
            elif piece == "required":
                default = "required"
            elif not piece.startswith("default: "):
                notes.append(piece)
    return meaning.strip(), default, notes


def parameter_rows(command, ctx, keys: dict[str, str] | None = None) -> tuple[list, dict[str | None, list]]:
    """Arguments as (name, meaning, default) and options grouped by their help panel, as table rows."""
    arguments, panels = [], {}
    for param in command.params:
        record = param.get_help_record(ctx)
        if record is None:  # hidden
            continue
        opts, help_text = record
        meaning, default, notes = split_extras(help_text, getattr(param, "help", "") or "")
        if notes:
            meaning += f" ({'; '.join(notes)})"
        if param.param_type_name == "argument":
            arguments.append((opts, meaning, default))
            continue
        flags = list(param.opts)
        primary = next((f for f in flags if f.startswith("--")), flags[0])
        aliases = [f for f in flags if f != primary]
        name = primary + ("/" + "/".join(param.secondary_opts) if param.secondary_opts else "")
        metavar = "" if getattr(param, "is_flag", False) else opts.rsplit(" ", 1)[-1] if " " in opts.split(", ")[-1] \
            else ""
        if getattr(param, "is_flag", False) and not param.secondary_opts and not default and param.default is False:
            default = "off"
        row = [cell(code(f"{name} {metavar}".strip())), ", ".join(cell(code(a)) for a in aliases)]
        if keys is not None:
            row.append(cell(code(keys.get(param.name, ""))))
        row += [cell(default), cell(meaning)]
        panels.setdefault(getattr(param, "rich_help_panel", None), []).append(row)
    return arguments, panels


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def train_keys(command) -> dict[str, str]:
    """{click parameter name: config.json key} for `imood train`; every TrainConfig field must be an option."""
    from imood_cli.engine.training import config

    fields = config.options()
    params = {p.name: p for p in command.params}
    for name, (meta, _, _) in fields.items():
        param = params.get(name)
        declared = [f for flag in meta.flags for f in flag.split("/")]
        shown = list(param.opts) + list(param.secondary_opts) if param is not None else []
        if param is None or sorted(declared) != sorted(shown):
            raise RuntimeError(f"imood train has no option for TrainConfig.{name} as declared ({declared}, "
                               f"found {shown})")
    return {name: name for name in fields}


def render(spec: str) -> str:
    """The generated block for `imood WORDS...` ('imood' alone: the command overview)."""
    words = spec.split()
    if not words or words[0] != "imood":
        raise ValueError(f"a cli block names a command line starting with imood, got {spec!r}")
    command, ctx = find(words[1:])
    usage = command.get_usage(ctx).removeprefix("Usage: ").strip()
    out = ["<!-- generated from the code by docs/_hooks/cli_reference.py: edit the code, then run "
           "`python docs/_hooks/cli_reference.py` -->", "", "```text", usage, "```", ""]
    for para in paragraphs(command.help):
        out += [prose(para), ""]
    if hasattr(command, "commands"):
        rows = [[cell(code(f"{spec} {name}")), cell(sub.get_short_help_str(limit=300))]
                for name, sub in command.commands.items() if not getattr(sub, "hidden", False)]
        out += table(["command", "what it does"], rows) + [""]
    keys = train_keys(command) if words[1:] == ["train"] else None
    arguments, panels = parameter_rows(command, ctx, keys)
    if arguments:
        out += table(["argument", "default", "meaning"],
                     [[cell(code(name)), cell(default), cell(meaning)] for name, meaning, default in arguments]) + [""]
    header = ["option", "aliases"] + (["key"] if keys is not None else []) + ["default", "meaning"]
    for panel, rows in panels.items():
        if panel is not None:
            out += [f"**{panel}**", ""]
        out += table(header, rows) + [""]
    return "\n".join(out)


METHODS = re.compile(r"(<!-- methods -->\n)(?P<body>.*?)(<!-- /methods -->)", re.S)


def option_list(cls) -> str:
    if cls is None or not cls.hyperparameters:
        return "–"
    out = []
    for key in cls.hyperparameters:
        value = getattr(cls, key)
        shown = cls.default_notes.get(key) or (str(value) if value != "" else "empty")
        out.append(f"`{key}` {shown}")
    return "; ".join(out)


def render_methods() -> str:
    """The built-in methods: what each contributes (score, training objective), its options by phase and its
    paper, from the classes' declarations."""
    from imood_cli.registry import registry

    reg = registry()
    rows = []
    for p in sorted(reg.plugins(), key=lambda p: p.name):
        if p.kind != "method" or not p.builtin or p.derived_from is not None:
            continue
        method, alias = p.method, reg.alias_of(p.name)
        score = f"as `{alias}`" if alias else "its own"
        paper = method.paper
        cite = f"[{paper.authors}, {paper.venue} {paper.year}]({paper.url})" if paper.url else paper.cite()
        rows.append([cell(code(p.name)), cell(score), "yes" if method.trainable() else "–",
                     cell(option_list(None if alias else method.score)), cell(option_list(method.objective)),
                     cite])
    out = ["<!-- generated from the code by docs/_hooks/cli_reference.py: edit the code, then run "
           "`python docs/_hooks/cli_reference.py` -->", ""]
    out += table(["method", "score", "training objective", "scoring options (`-m name:key=value`)",
                  "training options (`--ood-metric name:key=value`)", "paper"], rows)
    return "\n".join(out) + "\n"


def regenerate(text: str) -> str:
    text = METHODS.sub(lambda m: m.group(1) + render_methods() + m.group(3), text)
    return BLOCK.sub(lambda m: m.group(1) + render(m.group("command")) + "\n" + m.group(4), text)


def pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if "_hooks" not in p.parts)


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for path in pages():
        text = path.read_text(encoding="utf-8")
        new = regenerate(text)
        if new != text:
            stale.append(path)
            if not check:
                path.write_text(new, encoding="utf-8")
    for path in stale:
        print(f"{'stale' if check else 'rewrote'}: {path.relative_to(DOCS.parent)}")
    return 1 if check and stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
