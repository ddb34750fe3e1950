"""`imood`: the Typer app and the error boundary (one line and exit code 2 for bad input)."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
import warnings

import typer

from imood_cli import __version__
from imood_cli.cli import data as data_cmd
from imood_cli.cli import eval as eval_cmd
from imood_cli.cli import import_ckpt as import_ckpt_cmd
from imood_cli.cli import import_model as import_model_cmd
from imood_cli.cli import plugins as plugins_cmd
from imood_cli.cli import report as report_cmd
from imood_cli.cli import score as score_cmd
from imood_cli.cli import sweep as sweep_cmd
from imood_cli.cli import train as train_cmd
from imood_cli.cli.common import DDP_ARGV, set_argv, shown
from imood_cli.core.interrupts import Interrupts
from imood_cli.core.process import die_with_parent
from imood_cli.errors import ImoodError


class PanelledCommand(typer.core.TyperCommand):
    """Plain help with the options in sections, one per panel (`imood train`: what to train, method,
    optimisation, ...), as rich would group them, without rich's boxes."""

    def format_options(self, ctx, formatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                sections.setdefault(getattr(param, "rich_help_panel", None) or "Options", []).append(record)
        for name, rows in sections.items():
            with formatter.section(name):
                formatter.write_dl(rows)


app = typer.Typer(
    name="imood",
    help="Out-of-distribution detection on long-tailed data with ImOOD (class-prior-aware OOD scores).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's plain help: every alias and default readable at 80 columns
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
app.add_typer(data_cmd.app, name="data")
app.add_typer(plugins_cmd.app, name="plugins")
app.command("train", cls=PanelledCommand, context_settings={"help_option_names": ["-h", "--help"]})(train_cmd.train)
app.command("score")(score_cmd.score)
app.command("eval")(eval_cmd.eval_scores)
app.command("report")(report_cmd.report)
app.command("import-ckpt")(import_ckpt_cmd.import_ckpt)
app.command("import-model")(import_model_cmd.import_model)
app.command("sweep")(sweep_cmd.sweep)


def _version(value: bool) -> None:
    if value:
        print(f"imood {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version.")) -> None:
    """Out-of-distribution detection on long-tailed data with ImOOD."""


def _classes(*names: str) -> tuple[type, ...]:
    """Exception classes by dotted name, skipping those this Typer does not have."""
    found = []
    for name in names:
        module, _, attr = name.rpartition(".")
        try:
            found.append(getattr(importlib.import_module(module), attr))
        except (ImportError, AttributeError):
            pass
    return tuple(dict.fromkeys(found))


# The click this Typer raises: its own copy (typer._click, newer Typer) or the click package (older). Only
# that one is imported: the click package costs start-up time when Typer does not use it.
_CLICK = "typer._click.exceptions" if importlib.util.find_spec("typer._click") else "click.exceptions"
EXITS = _classes("typer.Exit", f"{_CLICK}.Exit")
ABORTS = _classes("typer.Abort", f"{_CLICK}.Abort")
CLICK_ERRORS = _classes(f"{_CLICK}.ClickException")


def _one_line(text: str) -> str:
    return shown(" ".join(str(text).split()), keep="")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Plugin warnings as one clean line; library warnings stay out of users' terminals."""
    from imood_cli.registry import PluginWarning

    if issubclass(category, PluginWarning):
        print(f"imood: warning: {_one_line(str(message).removeprefix('imood: '))}", file=sys.stderr)


def _plain_argument_help(command) -> None:
    """Arguments are named by their metavar in --help, without the Python type newer Typers add ('<path>')."""
    for param in getattr(command, "params", []):
        if param.param_type_name == "argument" and hasattr(type(param), "display_type_rich"):
            param.display_type_rich = lambda ctx=None: None
    for sub in getattr(command, "commands", {}).values():
        _plain_argument_help(sub)


def _clear_embedded_interrupt_flag() -> None:
    """Exit 130, not death by SIGINT, after a handled Ctrl-C.

    CPython marks a KeyboardInterrupt that escapes source run through its C API (as extension modules do
    while they import) "unhandled", and at exit kills the process with SIGINT although imood handled it:
    2 of 30 Ctrl-Cs at random moments of `imood score -m all` ended so. Each such run starts by clearing
    the mark, so running an empty statement through the same API clears it (0 of 30 after).
    """
    import ctypes

    ctypes.pythonapi.PyRun_SimpleString(b"")


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    if argv is None:  # a process of its own, perhaps started by a sweep
        die_with_parent()
    if not args and DDP_ARGV in os.environ and "WORLD_SIZE" in os.environ:
        args = json.loads(os.environ[DDP_ARGV])  # a process started by `imood train --ddp`
    if not args:
        args = ["--help"]  # `imood` alone: the overview of the commands
    set_argv(args)
    warnings.showwarning = _show_warning
    command = typer.main.get_command(app)
    _plain_argument_help(command)
    # Python's own Ctrl-C (a KeyboardInterrupt at once), remembering that one came: a Ctrl-C that lands inside an
    # extension module's initialisation comes out as another error (pybind11's `ImportError: initialization
    # failed`); knowing it came, the boundary still says "interrupted" and exits 130, not a traceback.
    ctrl_c = Interrupts(graceful=False)
    try:
        with ctrl_c:
            code = command.main(args=args, prog_name="imood", standalone_mode=False)
        if code == 130:  # Typer turns Ctrl-C inside a command into Exit(130) without a word
            print("imood: interrupted", file=sys.stderr)
    except EXITS as exc:
        code = exc.exit_code
    except CLICK_ERRORS as exc:
        print(f"imood: error: {_one_line(exc.format_message())}", file=sys.stderr)
        code = 2
    except ImoodError as exc:
        print(f"imood: error: {_one_line(exc)}", file=sys.stderr)
        code = exc.exit_code
    except (KeyboardInterrupt, *ABORTS):
        print("imood: interrupted", file=sys.stderr)
        code = 130
    except Exception as exc:
        if ctrl_c.came:  # whatever the Ctrl-C broke on its way out
            print("imood: interrupted", file=sys.stderr)
            code = 130
        elif isinstance(exc, OSError):  # a path the user gave that cannot be read or written
            where = f": {exc.filename}" if exc.filename else ""
            print(f"imood: error: {_one_line(exc.strerror or exc)}{where}", file=sys.stderr)
            code = 2
        else:
            raise
    finally:
        if "imood_cli.engine.runtime" in sys.modules:  # only a command that ran torch has a process group
            try:
                sys.modules["imood_cli.engine.runtime"].teardown()
            except KeyboardInterrupt:  # a second Ctrl-C while leaving: the files are already complete
                code = 130
    if code == 130:
        _clear_embedded_interrupt_flag()
    sys.exit(code if isinstance(code, int) else 0)
