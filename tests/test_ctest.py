"""Builds the torch-free core and its C++ unit test with CMake and runs ctest."""
import pathlib
import re
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
def test_ctest(tmp_path):
    build = tmp_path / "build"
    cmds = [
        ["cmake", "-S", str(ROOT), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release"],
        ["cmake", "--build", str(build), "-j2"],
        ["ctest", "--test-dir", str(build), "--output-on-failure"],
    ]
    for cmd in cmds:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    # the host emulation of the CUDA Libra-PB kernels must have run, and passed, in it
    assert re.search(r"Test +#\d+: test_libra_pb_emulation \.* +Passed", out.stdout), out.stdout[-4000:]
