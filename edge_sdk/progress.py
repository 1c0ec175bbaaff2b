"""Progress bars for long loops: one layout (what, bar, done/total, elapsed, remaining) on stderr.

rich is imported only when a bar is shown; where it is not installed (a bare robot image) loops run
without a bar.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Optional, Union

Show = Union[bool, Callable[[int, int], None]]


def progress_display(console: Any = None, field: Optional[str] = None) -> Any:
    """A rich `Progress` with the project's columns, then each task's `field` (task.fields[field]) if given.

    console: a rich Console (default: one on stderr). Use as a context manager; add one task per bar.
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    if field is not None:
        columns.append(TextColumn("{task.fields[" + field + "]}"))
    return Progress(*columns, console=console if console is not None else Console(stderr=True))


@contextlib.contextmanager
def progress_bar(label: str, total: int, show: Show = True, console: Any = None) -> Iterator[Callable[[], None]]:
    """Yield `advance()` for a loop of `total` steps.

    show: True draws a bar titled `label` (on `console`, default stderr); a callable is called as
    show(done, total) after each step instead; False shows nothing.
    """
    if callable(show):
        done = [0]

        def report() -> None:
            done[0] += 1
            show(done[0], total)

        yield report
        return
    display = None
    if show:
        try:
            display = progress_display(console)
        except ImportError:
            display = None
    if display is None:
        yield lambda: None
        return
    with display:
        task = display.add_task(label, total=total)
        yield lambda: display.advance(task)


@contextlib.contextmanager
def status(message: str, console: Any = None) -> Iterator[None]:
    """Say `message` while the block runs: a spinner on a terminal; elsewhere (a log, a pipe) the message
    once as a line, so long work is never silent. console: a rich Console (default: one on stderr)."""
    from rich.console import Console

    console = console if console is not None else Console(stderr=True)
    if not console.is_terminal:
        console.print(message, highlight=False, soft_wrap=True)
        yield
        return
    with console.status(message):
        yield
