"""argparse types shared by the pipeline's command line and the examples:
each turns a bad value into argparse's one-line error and exit code 2."""

import argparse


def seed(text):
    """A run's seed, 0 to 2**32 - 1 (`pipelines.models.parse_seed`)."""
    # pipelines.models imports Keras: only commands that train parse a seed.
    from pipelines.models import parse_seed

    try:
        return parse_seed(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def whole_number(minimum, why=""):
    """An argparse type: a whole number of at least `minimum` (`why`, if
    given, says why in the error)."""
    reason = f" ({why})" if why else ""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}{reason}, got {value}")
        return value

    return parse


at_least_one = whole_number(1)
"""A whole number of at least 1 (epochs, counts)."""
