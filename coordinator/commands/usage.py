"""How ``--help`` shows each command and parameter: ``--to KID``, ``--product PRODUCT``,
``--slices N``, ``--mode [reencrypt|rewrap]``, a flag alone (``--json``), an argument by its
name (``SWEEP_ID``); ``-h`` as ``--help``; a docstring's paragraphs as paragraphs.

Typer labels every parameter with its Python type (``<bool>``, ``<list[str]>``, ``<str>``), which
says nothing to an operator and puts a value after flags that take none. The root group names
each parameter of the whole tree once Typer has built it: an explicit ``metavar=`` wins; a
choice lists its choices; a number is ``N``; any other option is named after its long flag.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

from typer.core import TyperArgument, TyperGroup, TyperOption

HELP_OPTION_NAMES = ["-h", "--help"]
_NUMBERS = (int, float)


class _NamedArgument(TyperArgument):
    """An argument shown by its name alone (the name column says what it is)."""

    def display_type_rich(self, ctx: Any) -> str | None:
        return None


class ReencryptGroup(TyperGroup):
    """The root ``reencrypt`` group: names every parameter of the tree it holds (see above)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for command in _tree(self):
            _name_parameters(command)
            command.help = paragraphs(command.help)

    def get_params(self, ctx: Any) -> list[Any]:
        # Typer appends --install-completion and --show-completion after building the group.
        for param in self.params:
            if isinstance(param, TyperOption):
                param.metavar = option_metavar(param)
        return super().get_params(ctx)


def _tree(command: Any) -> Iterator[Any]:
    yield command
    for child in getattr(command, "commands", {}).values():
        yield from _tree(child)


def _name_parameters(command: Any) -> None:
    for param in command.params:
        if isinstance(param, TyperArgument):
            param.metavar = param.metavar or (param.name or "value").upper()
            param.__class__ = _NamedArgument
        elif isinstance(param, TyperOption):
            param.metavar = option_metavar(param)
    # Built now, with -h, instead of on first use from the context's names: it is named too.
    help_option = command.get_help_option(SimpleNamespace(help_option_names=HELP_OPTION_NAMES))
    if help_option is not None:
        help_option.metavar = ""


def option_metavar(option: TyperOption) -> str:
    """A flag: nothing; an explicit metavar; a choice: ``[a|b]``; a number: ``N``; else the long flag's name."""
    if option.is_flag or option.count:
        return ""
    if option.metavar is not None:
        return option.metavar
    described = getattr(option, "type_descriptor", None)
    choices = getattr(described, "choices", None)
    if choices:
        return "[" + "|".join(str(getattr(choice, "value", choice)) for choice in choices) + "]"
    if getattr(described, "annotation", None) in _NUMBERS:
        return "N"
    longest = max(option.opts, key=len)
    return longest.lstrip("-").replace("-", "_").upper()


def paragraphs(text: str | None) -> str | None:
    """A docstring's lines joined into paragraphs: Typer's rich help keeps each source line break."""
    if not text:
        return text
    return re.sub(r"(?<!\n)\n(?!\n)", " ", text)
