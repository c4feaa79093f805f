"""``camkit evaluate`` (moves here from camkit.evaluate when that package lands)."""

from camkit.evaluate import add_parser, run

__all__ = ["add_parser", "run"]
