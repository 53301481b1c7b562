"""What a run shows while it works: one line per node with status, elapsed time, hit or miss.

On a terminal a live rich table; elsewhere (CI logs, pipes) one plain line per event, so logs
stay readable. Passes report through `NodeProgress.update`.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import TextIO


@dataclass
class NodeLine:
    id: str
    pass_name: str
    key: str
    status: str = "pending"
    started: float | None = None
    seconds: float | None = None
    detail: str = ""
    completed: float | None = None
    total: float | None = None


class NodeProgress:
    """The `ctx.progress` of one node."""

    def __init__(self, display: "RunDisplay", line: NodeLine):
        self._display = display
        self._line = line
        self._last_plain = 0.0

    def update(self, completed: float | None = None, total: float | None = None, message: str | None = None) -> None:
        if completed is not None:
            self._line.completed = completed
        if total is not None:
            self._line.total = total
        if message is not None:
            self._line.detail = message
        self._display.refresh(self._line, self)


@dataclass
class RunDisplay:
    """Shows the run. Use as a context manager around the scheduler's loop."""

    lines: dict[str, NodeLine] = field(default_factory=dict)
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    live: bool | None = None
    quiet: bool = False

    def __post_init__(self) -> None:
        if self.live is None:
            self.live = self.stream.isatty() and not self.quiet
        self._live = None

    def add(self, node_id: str, pass_name: str, key: str) -> NodeLine:
        line = self.lines[node_id] = NodeLine(node_id, pass_name, key)
        return line

    def __enter__(self) -> "RunDisplay":
        if self.live:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(console=Console(file=self.stream), get_renderable=self._render, refresh_per_second=4)
            self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.refresh()
            self._live.__exit__(*exc)
            self._live = None

    def set(self, line: NodeLine, status: str, detail: str = "") -> None:
        now = time.perf_counter()
        if status == "running" and line.started is None:
            line.started = now
        if status in ("done", "cached", "failed") and line.started is not None:
            line.seconds = now - line.started
        line.status = status
        line.detail = detail
        self._emit(line)

    def warn(self, text: str) -> None:
        """A line the user must see whatever the mode (a damaged cache entry, say)."""
        if self._live is not None:
            from rich.markup import escape

            self._live.console.print(f"[yellow]warning:[/] {escape(text)}", markup=True, highlight=False)
        else:
            print(f"warning: {text}", file=self.stream, flush=True)

    def refresh(self, line: NodeLine, progress: NodeProgress) -> None:
        if self._live is not None:
            return  # the live table re-renders itself four times a second
        if not self.quiet:
            now = time.monotonic()
            if now - progress._last_plain >= 10:  # plain logs: at most one progress line per 10 s
                progress._last_plain = now
                self._plain(line)

    def _emit(self, line: NodeLine) -> None:
        if self._live is not None:
            self._live.refresh()
        elif not self.quiet:
            self._plain(line)

    def _plain(self, line: NodeLine) -> None:
        elapsed = f" {line.seconds:.1f}s" if line.seconds is not None else ""
        detail = f"  {line.detail}" if line.detail else ""
        if line.status == "running" and line.total:
            detail = f"  {line.completed or 0:.0f}/{line.total:.0f}{detail}"
        print(f"[{line.status:>7}] {line.id} ({line.pass_name}) {line.key[:12]}{elapsed}{detail}", file=self.stream, flush=True)

    def _render(self):
        from rich.table import Table

        from rich.markup import escape

        styles = {"pending": "dim", "queued": "yellow", "waiting": "yellow", "running": "cyan", "done": "green", "cached": "blue", "failed": "bold red"}
        table = Table(box=None, pad_edge=False, show_header=True, header_style="bold")
        for column in ("node", "pass", "key", "status", "time", "progress"):
            table.add_column(column)
        now = time.perf_counter()
        for line in self.lines.values():
            seconds = line.seconds if line.seconds is not None else (now - line.started if line.started else None)
            progress = line.detail
            if line.status == "running" and line.total:
                fraction = min(1.0, (line.completed or 0) / line.total)
                bar = "█" * int(fraction * 20) + "░" * (20 - int(fraction * 20))
                progress = f"{bar} {line.detail}"
            status = {"cached": "hit", "done": "miss, built"}.get(line.status, line.status)
            table.add_row(  # a pass's progress text and a plugin's name are not rich markup
                escape(line.id), escape(line.pass_name), line.key[:12], f"[{styles.get(line.status, '')}]{status}[/]",
                f"{seconds:.1f}s" if seconds is not None else "", escape(progress or ""),
            )
        return table
