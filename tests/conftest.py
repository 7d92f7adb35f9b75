import pytest
import torch

from dahp.cli import build_parser


@pytest.fixture
def cli():
    """Run a ``dahp`` command through the real parser, letting DahpError propagate (``main`` would print it)."""

    def run(argv):
        args = build_parser().parse_args([str(arg) for arg in argv])
        args.handler(args)

    return run


@pytest.fixture
def one_thread():
    """These tests time nothing: one thread keeps them fast on a small CPU shared with other jobs,
    where a descheduled second thread stalls every convolution (measured 5x slower on 2 busy cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
