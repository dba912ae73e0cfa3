"""Shared test fixtures: paths to the repo, to ../shared, and a CLI runner."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture()
def shared_dir() -> Path:
    """The team's read-only fixtures folder beside the checkout; skip when it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent (real fixtures live beside the checkout, never inside it)")
    return SHARED


@pytest.fixture(scope="session")
def waymo_python() -> Path:
    """The Waymo venv's python (`make waymo-env`); skip when it is absent."""
    from itkd_cli.core.errors import ItkdError
    from itkd_cli.core.waymo_env import waymo_python as find

    try:
        return find()
    except ItkdError as exc:
        pytest.skip(f"Waymo venv absent ({exc.message}); `make waymo-env` installs it")


@pytest.fixture()
def cli():
    """Invoke `itkd` in-process: returns a function(args) -> click Result."""
    from typer.testing import CliRunner

    from itkd_cli.cli.main import app

    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)

    return invoke


@pytest.fixture()
def one_thread():
    """One intra-op thread for tests on tiny tensors (avoids oversubscribing shared CPU cores)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture()
def torchrun():
    """Run `torchrun --standalone --nproc_per_node=N -m itkd_cli ARGS` on the CPU (gloo); returns the
    CompletedProcess (stdout, stderr as text)."""
    import os
    import subprocess
    import sys

    def run(nproc: int, *args: str, timeout: float = 300.0) -> subprocess.CompletedProcess:
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "itkd_cli", *[str(a) for a in args]]
        return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)

    return run


def load_benchmark(name: str):
    """Import ``benchmarks/<name>.py`` (not a package) as a module, for the tests of a benchmark script."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    """benchmarks/bench_kd.py as a module."""
    return load_benchmark("bench_kd")

