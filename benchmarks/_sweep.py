"""Learning-rate sweep options shared by the quality benchmarks (head_quality.py, digits_quality.py)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping


def add_centre_argument(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--centre", nargs="+", default=[], metavar="RECIPE=LR",
                    help="centre a recipe's lr sweep here instead of its default lr (e.g. a previous run's "
                         "best, to continue a sweep whose optimum sat at an edge)")


def non_negative_int(text: str) -> int:
    """argparse ``type=`` for counts such as ``--max-widen`` (0 allowed)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def positive_int(text: str) -> int:
    """argparse ``type=`` for ``--threads`` and similar (>= 1)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def parse_centres(ap: argparse.ArgumentParser, items: list[str], defaults: Mapping[str, float]) -> dict[str, float]:
    """``defaults`` with the ``RECIPE=LR`` overrides of ``--centre`` applied; bad items exit via ``ap.error``."""
    centre = dict(defaults)
    for item in items:
        recipe, _, lr = item.rpartition("=")  # recipe names may hold "=" (digits: "mona α=-20")
        if recipe not in defaults or not lr:
            ap.error(f"--centre takes RECIPE=LR with RECIPE in {tuple(defaults)}; got {item!r}")
        try:
            value = float(lr)
        except ValueError:
            ap.error(f"--centre {item!r}: LR must be a number")
        if not value > 0:
            ap.error(f"--centre {item!r}: LR must be > 0")
        centre[recipe] = value
    return centre
