"""Checks of the CUDA part of irnet that need no GPU (they run in CI, on the CPU machine):

* the built extension's machine code (``cuobjdump -sass``): the tensor-core conv kernels
  contain the 1-bit MMA instruction (``BMMA.168256.AND.POPC``) on sm_80 and sm_90, the
  CUDA-core ones none;
* its resources (``cuobjdump -res-usage`` / ``-elf``): no local memory and no stack frame in
  any irnet kernel, every kernel declares its launch bounds and its registers fit them;
* the CUDA conv algorithm setting (``irnet.ops.cuda_conv_algorithm`` & co, IRNET_CUDA_CONV).

Skipped, with the reason, where irnet was built without its CUDA kernels or where
cuobjdump is not found (PATH, the triton wheel's ``triton/backends/nvidia/bin``, the pip
package nvidia-cuda-cuobjdump).  IRNET_CUDA_BINARY=<file> checks another binary (an object
file or library) instead of the loaded extension.
"""
from __future__ import annotations

import functools
import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

import irnet
from irnet import ops

CUDA_BUILT = irnet._ext.LOADED and torch._C._dispatch_has_kernel_for_dispatch_key("irnet::xnor_conv2d", "CUDA")
needs_cuda_build = pytest.mark.skipif(
    not CUDA_BUILT, reason="irnet was built without its CUDA kernels (IRNET_CUDA=0, a CPU-only torch, or irnet._C "
                           "did not load: %s)" % (irnet._ext.ERROR,))


def _find_cuobjdump():
    found = shutil.which("cuobjdump")
    if found:
        return found
    spec = importlib.util.find_spec("triton")
    if spec is not None and spec.submodule_search_locations:
        for root in spec.submodule_search_locations:
            cand = os.path.join(root, "backends", "nvidia", "bin", "cuobjdump")
            if os.access(cand, os.X_OK):
                return cand
    for site in sys.path:
        for cand in glob.glob(os.path.join(site, "nvidia", "*", "bin", "cuobjdump")):
            if os.access(cand, os.X_OK):
                return cand
    return None


CUOBJDUMP = _find_cuobjdump()
needs_cuobjdump = pytest.mark.skipif(
    CUOBJDUMP is None, reason="cuobjdump not found (PATH, triton/backends/nvidia/bin, pip nvidia-cuda-cuobjdump)")
BINARY = os.environ.get("IRNET_CUDA_BINARY") or (irnet._C.__file__ if CUDA_BUILT else None)
ARCHS = ("sm_80", "sm_90")


def _run(*args) -> str:
    out = subprocess.run([CUOBJDUMP, *args, BINARY], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"cuobjdump {' '.join(args)} failed:\n{out.stderr[-2000:]}"
    return out.stdout


@functools.lru_cache(maxsize=None)
def _archs() -> frozenset:
    """The SASS architectures the binary holds (cuobjdump -lelf: ...sm_80.cubin)."""
    return frozenset(re.findall(r"\.(sm_\d+a?)\.cubin", _run("-lelf")))


def _split_functions(text: str) -> dict:
    """{kernel name: its text} of a cuobjdump listing ("Function : name" headers)."""
    parts = re.split(r"^\s*Function\s*:\s*(\S+)\s*$", text, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


@functools.lru_cache(maxsize=None)
def _sass(arch: str) -> dict:
    return _split_functions(_run("-sass", "-arch", arch))


def _require_arch(arch):
    if arch not in _archs():
        pytest.skip(f"the binary holds no {arch} code (it has {sorted(_archs())}); build with "
                    f"TORCH_CUDA_ARCH_LIST='8.0;9.0+PTX'")


@needs_cuda_build
@needs_cuobjdump
@pytest.mark.parametrize("arch", ARCHS)
def test_tensor_core_kernels_use_the_1bit_mma(arch):
    """Each instantiation of the tensor-core conv (fused / unfused x NCHW / channels_last)
    issues BMMA.168256.AND.POPC: 4 x 4 warp tiles x 2 k-steps of a stage = 32 per loop body."""
    _require_arch(arch)
    funcs = _sass(arch)
    mma = {n: body for n, body in funcs.items() if "xnor_mma_conv_kernel" in n}
    assert len(mma) == 4, f"expected 4 xnor_mma_conv_kernel instantiations in {arch}, found {sorted(mma)}"
    for name, body in mma.items():
        count = len(re.findall(r"\bBMMA\.168256\.AND\.POPC\b", body))
        assert count >= 16, f"{arch} {name}: {count} BMMA.168256.AND.POPC instructions (expected >= 16)"


@needs_cuda_build
@needs_cuobjdump
@pytest.mark.parametrize("arch", ARCHS)
def test_cuda_core_kernels_use_popc(arch):
    """The CUDA-core conv kernels count with POPC and have no tensor-core instruction."""
    _require_arch(arch)
    popc = {n: body for n, body in _sass(arch).items() if "xnor_popc_conv_kernel" in n}
    assert len(popc) == 4, f"expected 4 xnor_popc_conv_kernel instantiations in {arch}, found {sorted(popc)}"
    for name, body in popc.items():
        assert re.search(r"\bPOPC\b", body) and not re.search(r"\bBMMA\b", body), f"{arch} {name}"


def _res_usage() -> dict:
    """{(arch, kernel): {REG, STACK, SHARED, LOCAL, ...}} from cuobjdump -res-usage."""
    out, arch, func = {}, None, None
    for line in _run("-res-usage").splitlines():
        m = re.match(r"\s*arch\s*=\s*(sm_\d+a?)", line)
        if m:
            arch = m.group(1)
            continue
        m = re.match(r"\s*Function\s+(\S+?):?\s*$", line)
        if m:
            func = m.group(1)
            continue
        if func and "REG:" in line:
            out[(arch, func)] = {k: int(v) for k, v in re.findall(r"(\w+):(\d+)", line)}
            func = None
    return out


def _max_threads() -> dict:
    """{(arch, kernel): launch bound} from the EIATTR_MAX_THREADS attributes of cuobjdump -elf."""
    out, arch, func, attr = {}, None, None, False
    for line in _run("-elf").splitlines():
        m = re.match(r"\s*arch\s*=\s*(sm_\d+a?)", line)
        if m:
            arch = m.group(1)
            continue
        m = re.match(r"\.nv\.info\.(\S+)", line)  # a kernel's attribute section (not the section table)
        if m:
            func = m.group(1)
            continue
        if "EIATTR_MAX_THREADS" in line:
            attr = True
            continue
        if attr and func:
            m = re.search(r"Value:\s*0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)", line)
            if m:
                x, y, z = (int(v, 16) for v in m.groups())
                out[(arch, func)] = x * y * z
                attr = False
    return out


@needs_cuda_build
@needs_cuobjdump
def test_no_local_memory_no_stack_registers_within_launch_bounds():
    usage = _res_usage()
    # every irnet kernel lives in namespace irnet_cuda (mangled: ...10irnet_cuda...)
    kernels = {k: v for k, v in usage.items() if "irnet_cuda" in k[1]}
    archs = {a for a, _ in kernels}
    assert archs & set(ARCHS), f"no irnet kernels for {ARCHS} in the binary's resource report ({sorted(archs)})"
    bounds = _max_threads()
    problems = []
    for (arch, name), res in sorted(kernels.items()):
        if res.get("LOCAL", 0) != 0 or res.get("STACK", 0) != 0:
            problems.append(f"{arch} {name}: LOCAL {res.get('LOCAL')} bytes, STACK {res.get('STACK')} bytes")
        bound = bounds.get((arch, name))
        if bound is None:
            problems.append(f"{arch} {name}: no __launch_bounds__ (EIATTR_MAX_THREADS) in the binary")
        elif res["REG"] * bound > 65536 or res["REG"] > 255:
            problems.append(f"{arch} {name}: {res['REG']} registers x {bound} threads > the 64K register file")
    assert not problems, "\n".join(problems)
    # both conv paths are among the checked kernels
    names = " ".join(name for _, name in kernels)
    assert "xnor_mma_conv_kernel" in names and "xnor_popc_conv_kernel" in names and "xnor_mma_prep_kernel" in names


# --------------------------------------------------------------------------- the algorithm setting
@needs_cuda_build
def test_cuda_conv_algorithm_setting():
    before = ops.cuda_conv_algorithm()
    assert before in ("auto", "popc", "mma")
    assert ops.cuda_conv_algorithms() == ["auto", "popc", "mma"]
    try:
        for algo in ("popc", "mma", "auto"):
            ops.set_cuda_conv_algorithm(algo)
            assert ops.cuda_conv_algorithm() == algo
            assert torch.ops.irnet.cuda_conv_algorithm() == algo
        with pytest.raises(RuntimeError, match="one of auto, popc, mma"):
            ops.set_cuda_conv_algorithm("xnor")
        with pytest.raises(RuntimeError, match="one of auto, popc, mma"):
            torch.ops.irnet.set_cuda_conv_algorithm("tensor")
    finally:
        ops.set_cuda_conv_algorithm(before)
    # the fused conv has its own CUDA kernel (no Python fallback registered for CUDA)
    assert ops.has_compiled_kernel("xnor_conv2d_fused", "cuda")
    assert irnet.extension_status()["kernels"]["xnor_conv2d_fused/cuda"] == "compiled"


def _in_subprocess(code, **env):
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, **env), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1], out.stderr


@needs_cuda_build
def test_irnet_cuda_conv_env_var():
    code = "import irnet; print(irnet.ops.cuda_conv_algorithm())"
    assert _in_subprocess(code, IRNET_CUDA_CONV="mma")[0] == "mma"
    assert _in_subprocess(code, IRNET_CUDA_CONV="popc")[0] == "popc"
    algo, err = _in_subprocess(code, IRNET_CUDA_CONV="fast")
    assert algo == "auto" and "IRNET_CUDA_CONV=fast" in err


def test_cuda_conv_controls_without_kernels():
    """Without the CUDA kernels: the getters say 'reference', the setter warns and does
    nothing, and an unknown name is still an error."""
    code = (
        "import warnings, irnet\n"
        "from irnet import ops\n"
        "assert ops.cuda_conv_algorithm() == 'reference', ops.cuda_conv_algorithm()\n"
        "assert ops.cuda_conv_algorithms() == ['reference']\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    ops.set_cuda_conv_algorithm('mma')\n"
        "assert any('does nothing' in str(x.message) for x in w), [str(x.message) for x in w]\n"
        "try:\n"
        "    ops.set_cuda_conv_algorithm('bogus')\n"
        "except RuntimeError as e:\n"
        "    assert 'one of auto, popc, mma' in str(e)\n"
        "else:\n"
        "    raise AssertionError('no error')\n"
        "print('ok')\n")
    assert _in_subprocess(code, IRNET_DISABLE_EXTENSION="1")[0] == "ok"
