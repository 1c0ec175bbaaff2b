"""edge_sdk.progress: the one progress bar (a rich bar, a callback, or nothing)."""

from __future__ import annotations

import io

from rich.console import Console

from edge_sdk.progress import progress_bar, progress_display


def test_a_callback_gets_done_and_total():
    calls = []
    with progress_bar("work", 3, lambda done, total: calls.append((done, total))) as advance:
        for _ in range(3):
            advance()
    assert calls == [(1, 3), (2, 3), (3, 3)]


def test_disabled_shows_nothing():
    with progress_bar("work", 2, False) as advance:
        advance()
        advance()


def test_a_bar_counts_on_its_console():
    out = io.StringIO()
    console = Console(file=out, width=120, force_terminal=False)
    with progress_bar("synthesizing 4 images", 4, True, console=console) as advance:
        for _ in range(4):
            advance()
    assert "synthesizing 4 images" in out.getvalue() and "4/4" in out.getvalue()


def test_a_display_shows_a_task_field():
    out = io.StringIO()
    with progress_display(Console(file=out, width=120), field="step") as display:
        task = display.add_task("robot-1", total=4, step="copying")
        display.update(task, completed=2)
    assert "robot-1" in out.getvalue() and "copying" in out.getvalue() and "2/4" in out.getvalue()
