"""The keys, on one screen."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

HELP = """\
# mpt-tui keys

| key | where | action |
|---|---|---|
| `1` / `2` / `3` | everywhere | Runs / Results / Launch |
| `ctrl+p` | everywhere | command palette: every action by name |
| `?` | everywhere | this help |
| `q` | everywhere | quit (runs go on in the background) |
| `up` / `down` | Runs, Results | select a run / a row |
| `c` | Runs | cancel the selected run (checkpoint, then stop) |
| `u` | Runs | resume the selected run from its last checkpoint |
| `d` | Runs | delete the selected run (asks first) |
| `space` | Results | add or remove the selected run from the table |
| `s` | Results | sort by the next column |
| `enter` | Results | per-split scores and chosen learning rates of a task |
| `x` | Results | export CSV (per-split rows and the aggregated table) |
| `ctrl+s` | Launch | start the run |
| `ctrl+w` | Launch | save the form as a preset file |
| `escape` | dialogs | close |
"""


class HelpScreen(ModalScreen):
    BINDINGS = [Binding("escape,question_mark,q", "dismiss", "Close", id="close-help")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box"):
            yield Markdown(HELP)
