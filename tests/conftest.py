import os
import pathlib
import sys

import pytest
import torch

import irnet  # noqa: F401  (registers the ops)

ROOT = pathlib.Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))  # the tests import the benchmark scripts' modules (timing, bench_cuda_conv, ...)


def cli_env():
    """The environment of a test's `python -m irnet...` subprocess: this checkout's irnet
    first on PYTHONPATH, one OpenMP thread."""
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")


def shared_data_dir():
    """Real datasets for tests: $IRNET_TEST_DATA, else ../shared/data beside the repo."""
    env = os.environ.get("IRNET_TEST_DATA")
    path = pathlib.Path(env) if env else ROOT.parent / "shared" / "data"
    return path if path.is_dir() else None


@pytest.fixture
def shared_data():
    path = shared_data_dir()
    if path is None:
        pytest.skip("shared real data not found: set IRNET_TEST_DATA to the folder of the .npz files")
    return path


def devices():
    out = ["cpu"]
    if torch.cuda.is_available():
        out.append("cuda")
    return out
