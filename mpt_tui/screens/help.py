"""The keys, on one screen: generated from the app's and the screens' BINDINGS.

Each binding's description (and tooltip, where it has one) is its help text, so
the table cannot drift from the keys the app actually has.
"""

from __future__ import annotations

from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.keys import format_key
from textual.screen import ModalScreen, Screen
from textual.widgets import Markdown


def key_text(keys: str) -> str:
    """'escape,question_mark' -> 'esc / ?'; 'ctrl+s' stays 'ctrl+s'."""
    out = []
    for key in keys.split(","):
        *modifiers, name = key.strip().split("+")
        out.append("+".join([*modifiers, format_key(name)]))
    return " / ".join(out)


def _as_binding(binding: BindingType) -> Binding:
    return binding if isinstance(binding, Binding) else Binding(*binding)


def declared_bindings(cls: type) -> list[Binding]:
    """The BINDINGS this project declares on `cls` and its own base classes (not Textual's)."""
    out = []
    for klass in cls.__mro__:
        if "BINDINGS" in klass.__dict__ and klass.__module__.startswith("mpt_tui"):
            out += [_as_binding(b) for b in klass.__dict__["BINDINGS"]]
    return out


def help_scopes(app: App) -> list[tuple[str, list[Binding]]]:
    """(where, bindings): the app's own and Textual's app-wide keys, then each mode's screen, then each dialog."""
    everywhere = declared_bindings(type(app))
    everywhere += [_as_binding(b) for b in App.BINDINGS if not _as_binding(b).system]
    if app.ENABLE_COMMAND_PALETTE:
        everywhere.append(Binding(app.COMMAND_PALETTE_BINDING, "command_palette", "Command palette",
                                  tooltip="every action by name"))
    everywhere += [_as_binding(b) for b in Screen.BINDINGS]
    scopes = [("everywhere", everywhere)]
    scopes += [(mode.capitalize(), declared_bindings(screen)) for mode, screen in app.MODES.items()
               if isinstance(screen, type)]
    scopes += [(where, declared_bindings(screen)) for where, screen in getattr(app, "DIALOGS", {}).items()]
    return [(where, bindings) for where, bindings in scopes if bindings]


def key_rows(app: App) -> list[tuple[str, str, str, str]]:
    """(keys, where, description, details) for every binding: its description and tooltip."""
    rows = []
    for where, bindings in help_scopes(app):
        for binding in bindings:
            what = binding.description or binding.action
            details = binding.tooltip if not binding.tooltip.startswith(what) else ""  # "Quit": "Quit the app..."
            rows.append((key_text(binding.key), where, what, details))
    return rows


def key_markdown(rows: list[tuple[str, str, str, str]]) -> str:
    """A section per scope, a line per binding: `key` **description** — details."""
    lines = ["# mpt-tui keys"]
    for keys, where, what, details in rows:
        if f"## {where}" not in lines:
            lines += ["", f"## {where}", ""]
        lines.append(f"- `{keys}` **{what}**" + (f" — {details}" if details else ""))
    return "\n".join(lines) + "\n"


class HelpScreen(ModalScreen):
    BINDINGS = [Binding("escape,question_mark,q", "dismiss", "Close", id="close-help")]

    def compose(self) -> ComposeResult:
        self.rows = key_rows(self.app)
        self.markdown = key_markdown(self.rows)
        with VerticalScroll(id="help-box"):
            yield Markdown(self.markdown)
