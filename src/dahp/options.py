"""Command-line pieces that ``dahp`` and ``dahp index`` share, declared once so that one
option reads, parses and documents the same way in every command."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

Number = TypeVar("Number", int, float)


def number_at_least(kind: Callable[[str], Number], minimum: Number, what: str) -> Callable[[str], Number]:
    """An argparse ``type`` that names what it expected when the value is not one."""

    def parse(text: str) -> Number:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not value >= minimum:  # also refuses a float NaN
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


positive_int = number_at_least(int, 1, "a positive integer")
non_negative_int = number_at_least(int, 0, "an integer >= 0")
non_negative_float = number_at_least(float, 0.0, "a number >= 0")


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to an option's help when it has a default worth saying and
    its help does not already name one (off switches and unset values say nothing)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (action.option_strings and all(default is not unset for unset in (None, False, argparse.SUPPRESS))
                and "default" not in text and not isinstance(action, argparse._VersionAction)):
            shown = ",".join(map(str, default)) if isinstance(default, list) else default
            text = f"{text} (default: {str(shown).replace('%', '%%')})".lstrip()
        return text


def add_source_options(parser: argparse.ArgumentParser) -> None:
    """How a data source's images are found, cached and screened."""
    parser.add_argument("--image-root", default=None, help="root of the relative paths in a list file or CSV")
    parser.add_argument("--cache-dir", default=None,
                        help="where decoded archives are cached (default $DAHP_CACHE or ~/.cache/dahp)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave out unreadable or oversized images and list them")


def add_runtime_options(parser: argparse.ArgumentParser) -> None:
    """Where and how fast images are encoded."""
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    parser.add_argument("--batch-size", type=positive_int, default=256, help="images per forward pass")
    parser.add_argument("--workers", type=non_negative_int, default=0, help="image-decoding processes")
