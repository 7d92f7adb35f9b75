import pytest

from dahp.cli import build_parser


@pytest.fixture
def cli():
    """Run a ``dahp`` command through the real parser, letting DahpError propagate (``main`` would print it)."""

    def run(argv):
        args = build_parser().parse_args([str(arg) for arg in argv])
        args.handler(args)

    return run
