"""The `edge-sdk` command line.

One module per user, each adding its own commands in `register(app)`: `workstation` (compress, demo,
export, eval), `robot` (run, bench, doctor, install, rollback, list, service), `fleet` (flash),
`bundle` (bundle ..., keygen) and `data` (data ...). Those modules import only typer (and edge_sdk
constants) at module level and import the work inside each command, so `edge-sdk --help` is fast and works on a robot
without paddleslim.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Callable

import typer

import edge_sdk
from edge_sdk.errors import EdgeSdkError

app = typer.Typer(
    name="edge-sdk",
    help="Take a YOLOv3 detector from a workstation to Jetson AGX Xavier robots.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


# Recent typer (0.29 here) labels a value by its Python type (`<int range>`, `<list[str]>`, `<bool>` beside a
# flag); typer 0.20 (Python 3.8's newest) prints click's metavars. Both show click's: INTEGER RANGE, TEXT, none for a flag.
_CLICK_METAVARS = {"int": "INTEGER", "float": "FLOAT", "str": "TEXT", "bool": None}


def _click_metavar(typer_label: str) -> str | None:
    """typer's `<int range>` -> "INTEGER RANGE", `<list[str]>` -> "TEXT", `<a|b>` -> "[a|b]", `<bool>` -> None."""
    label = typer_label.strip("<>")
    if label.startswith("list[") and label.endswith("]"):
        label = label[len("list[") : -1]
    if "|" in label:
        return "[{}]".format(label)
    kind, _, suffix = label.partition(" ")
    if kind in _CLICK_METAVARS and _CLICK_METAVARS[kind] is None:
        return None
    return " ".join(filter(None, (_CLICK_METAVARS.get(kind, kind.upper()), suffix.upper())))


def _use_click_metavars() -> None:
    for param_class in (typer.core.TyperArgument, typer.core.TyperOption):
        typer_display_type = getattr(param_class, "display_type", None)
        if typer_display_type is None:  # typer 0.20: click renders the metavars itself
            continue

        def display_type(self: Any, ctx: Any, typer_display_type: Callable[..., str] = typer_display_type) -> Any:
            return _click_metavar(typer_display_type(self, ctx))

        param_class.display_type = display_type


_use_click_metavars()


def _version(value: bool) -> None:
    if value:
        typer.echo("edge-sdk {}".format(edge_sdk.__version__))
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Take a YOLOv3 detector from a workstation to Jetson AGX Xavier robots."""


def _register_all() -> None:
    from edge_cli import bundle, data, fleet, robot, workstation

    for module in (data, workstation, bundle, robot, fleet):
        module.register(app)


_register_all()

# click's ClickException, the base of every usage error: recent typer (0.29 here) vendors click and exports it
# as typer.TyperException, older typer (the newest for Python 3.8 is 0.20) uses click's own.
_CLICK_ERROR = next(cls for cls in typer.BadParameter.__mro__ if cls.__name__ == "ClickException")


def _finite_numbers_only(command: Any) -> Any:
    """`command` (a click command or group, recursively) with every float option refusing nan and inf:
    click 8.1 (Python 3.8's) lets nan through a min/max range; recent typer has no `type` here and refuses them itself."""

    def finite(convert: Callable[..., Any]) -> Callable[..., Any]:
        def converted(value: Any, param: Any = None, ctx: Any = None) -> Any:
            number = convert(value, param, ctx)
            if isinstance(number, float) and not math.isfinite(number):
                raise typer.BadParameter("{!r} is not a finite number".format(value), ctx=ctx, param=param)
            return number

        return converted

    for param in command.params:
        if getattr(getattr(param, "type", None), "name", "") in ("float", "float range"):
            param.type.convert = finite(param.type.convert)
    for sub in getattr(command, "commands", {}).values():
        _finite_numbers_only(sub)
    return command


def main() -> None:
    """Console-script entry point: user errors become one line on stderr and a non-zero exit.

    Usage errors (a missing option, a value out of its range: exit 2), the SDK's own errors and
    OS errors each print one `error:` line; Ctrl-C exits with 130.
    """
    try:
        code = _finite_numbers_only(typer.main.get_command(app)).main(prog_name="edge-sdk", standalone_mode=False)
    except typer.Abort:
        typer.echo("Aborted!", err=True)
        sys.exit(1)
    except _CLICK_ERROR as exc:
        context = getattr(exc, "ctx", None)
        see = " (see '{} --help')".format(context.command_path) if context is not None else ""
        typer.echo("error: {}{}".format(exc.format_message(), see), err=True)
        sys.exit(exc.exit_code)
    except EdgeSdkError as exc:
        typer.echo("error: {}".format(exc), err=True)
        sys.exit(exc.exit_code)
    except OSError as exc:
        typer.echo("error: {}".format(_os_error_line(exc)), err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


def _os_error_line(exc: OSError) -> str:
    """The file and the reason, without errno: "[Errno 21] Is a directory: 'a.tmp' -> 'a'" -> "a: Is a directory"."""
    if not exc.strerror:
        return str(exc)
    path = exc.filename2 if exc.filename2 is not None else exc.filename
    return exc.strerror if path is None else "{}: {}".format(path, exc.strerror)
