"""`edge-sdk ... --help` of every command and group: one example each, click's metavars, no Python type names."""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from edge_cli import app
from edge_sdk.quiet import VERBOSE_HELP

PYTHON_TYPE_LABELS = ("<list[", "<int range>", "<float range>", "<int>", "<float>", "<str>", "<path>", "<bool>")


def _command_paths(command, path=()):
    """Every command and group below `command` as its argv words, e.g. ("bundle", "sign")."""
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield path + (name,)
        yield from _command_paths(sub, path + (name,))


COMMAND_PATHS = list(_command_paths(typer.main.get_command(app)))


def test_the_walk_reaches_commands_and_groups():
    assert {("compress",), ("run",), ("bundle",), ("bundle", "sign"), ("data",), ("service",), ("fleet",)} <= set(
        COMMAND_PATHS
    )


@pytest.mark.parametrize("words", COMMAND_PATHS, ids=" ".join)
def test_help_shows_an_example_and_no_python_type_names(words):
    result = CliRunner().invoke(app, [*words, "--help"], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    assert re.search(r"Example: (sudo )?edge-sdk {}\b".format(" ".join(words)), result.output), result.output
    assert not [label for label in PYTHON_TYPE_LABELS if label in result.output], result.output


PADDLE_COMMANDS = [("compress",), ("demo",), ("export",), ("eval",), ("run",), ("bench",)]
"""The commands that run Paddle, whose routine output `edge_sdk.quiet` hides."""


@pytest.mark.parametrize("words", PADDLE_COMMANDS, ids=" ".join)
def test_every_command_that_runs_paddle_shows_its_output_with_verbose(words):
    command = typer.main.get_command(app)
    for word in words:
        command = command.commands[word]
    verbose = [param for param in command.params if "--verbose" in param.opts]
    assert verbose and VERBOSE_HELP in verbose[0].help, [param.opts for param in command.params]
