"""`--quick` for every bench: the smallest size that still prints the bench's figures, so the
test suite runs each bench (tests/test_benches.py) and a bench that cannot run is caught.

    args = parse(parser, clips=32, epochs=1)   # --quick sets these, unless given on the command line
"""
from __future__ import annotations

import argparse


def parse(parser: argparse.ArgumentParser, argv=None, **smallest) -> argparse.Namespace:
    sizes = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in smallest.items())
    parser.add_argument("--quick", action="store_true",
                        help=f"the smallest size, for the test suite ({sizes}); figures at it are not for reading")
    first, _ = parser.parse_known_args(argv)
    if first.quick:
        parser.set_defaults(**smallest)
    return parser.parse_args(argv)
