"""Run-time controls of the compiled kernels: the CPU's SIMD level and conv algorithm, the
CUDA conv algorithm.

The CPU XNOR kernels (csrc/cpu/xnor_cpu.cpp) pick a SIMD level at load time (the best
the CPU supports, or IRNET_SIMD=scalar|avx2|avx512), and the binary convolution has these
algorithms: "popcount" (the XNOR-popcount register tile, every level), "lut" (table
lookups on 4-channel nibbles, AVX2 level only: faster for layers with few input channels
on large images, see csrc/cpu/xnor_lut.h) and "planes" (position-vectorized popcount on
8- to 64-bit channel lanes, AVX-512 level with BITALG only: faster for layers with few
input channels and on large maps, see csrc/cpu/xnor_planes.h); "auto" (the default, or
IRNET_CPU_CONV=auto|popcount|lut|planes at load) picks per layer.  All are exact: the
choice changes speed, never a result.

On CUDA the binary convolution (and linear) has two exact kernels as well: "popc" (XNOR and
popcount on the CUDA cores) and "mma" (1-bit tensor cores, mma.m16n8k256 AND + popcount,
GPUs of compute capability 8.0 and newer); "auto" (the default, or IRNET_CUDA_CONV=auto|popc|mma
at load) picks per call (csrc/cuda/xnor.cu says how).  These functions read or change the
settings.
"""
from __future__ import annotations

import torch

from .. import _ext

__all__ = ["cpu_simd_level", "cpu_simd_levels", "set_cpu_simd_level", "cpu_conv_algorithm", "cpu_conv_algorithms",
           "set_cpu_conv_algorithm", "cuda_conv_algorithm", "cuda_conv_algorithms", "set_cuda_conv_algorithm"]

CUDA_CONV_ALGORITHMS = ("auto", "popc", "mma")


def _control(name: str):
    """The compiled control op torch.ops.irnet.<name>, or None without the extension."""
    return getattr(torch.ops.irnet, name) if _ext.LOADED and hasattr(torch.ops.irnet, name) else None


def _read_control(name: str, convert=lambda v: v, fallback="reference"):
    op = _control(name)
    return convert(op()) if op is not None else fallback


def _set_control(name: str, value: str) -> None:
    op = _control(name)
    if op is not None:
        op(str(value))
    elif value != "reference":
        import warnings

        warnings.warn(f"irnet: the compiled CPU kernels are not loaded; {name}({value!r}) does nothing",
                      RuntimeWarning, stacklevel=3)


def cpu_simd_level() -> str:
    """The SIMD level the CPU XNOR kernels use now ('avx512', 'avx2', 'scalar'), or
    'reference' when the compiled CPU kernels are not available."""
    return _read_control("cpu_simd_level")


def cpu_simd_levels() -> list:
    """The SIMD levels this CPU (and build) can run, best first; ['reference'] without the extension."""
    return _read_control("cpu_simd_levels", list, ["reference"])


def set_cpu_simd_level(level: str) -> None:
    """Make the CPU XNOR kernels use ``level`` (one of :func:`cpu_simd_levels`).  Raises
    RuntimeError for a level this CPU cannot run; a no-op on the reference path."""
    _set_control("set_cpu_simd_level", level)


def cpu_conv_algorithm() -> str:
    """The CPU convolution algorithm setting: 'auto', 'popcount', 'lut' or 'planes'
    ('reference' without the compiled kernels)."""
    return _read_control("cpu_conv_algorithm")


def cpu_conv_algorithms() -> list:
    """The settings that make a difference at the current SIMD level: ['auto', 'popcount',
    'lut'] at 'avx2', ['auto', 'popcount', 'planes'] at 'avx512' on a CPU with AVX-512
    BITALG and VPOPCNTDQ, ['auto', 'popcount'] elsewhere (there the other names run
    popcount)."""
    return _read_control("cpu_conv_algorithms", list, ["reference"])


def set_cpu_conv_algorithm(algorithm: str) -> None:
    """Set the CPU convolution algorithm: 'auto' (per layer), 'popcount', 'lut' (wherever
    the LUT kernel applies: AVX2 level, padding not much larger than the image) or 'planes'
    (wherever the planes kernel applies: AVX-512 level with BITALG, padding not much larger
    than the image).  Raises RuntimeError for another name; a no-op on the reference path."""
    _set_control("set_cpu_conv_algorithm", algorithm)


def cuda_conv_algorithm() -> str:
    """The CUDA convolution algorithm setting: 'auto', 'popc' or 'mma' ('reference' where
    irnet was built without its CUDA kernels)."""
    return _read_control("cuda_conv_algorithm")


def cuda_conv_algorithms() -> list:
    """The CUDA convolution algorithm settings: ['auto', 'popc', 'mma'], or ['reference']
    where irnet was built without its CUDA kernels."""
    return _read_control("cuda_conv_algorithms", list, ["reference"])


def set_cuda_conv_algorithm(algorithm: str) -> None:
    """Set the CUDA convolution algorithm: 'auto' (per call), 'popc' (CUDA cores) or 'mma'
    (1-bit tensor cores; a call on a GPU older than compute capability 8.0 then raises).
    Raises RuntimeError for another name; where the CUDA kernels are not built, a no-op with
    a warning."""
    if algorithm not in CUDA_CONV_ALGORITHMS:
        raise RuntimeError(f"irnet.ops.set_cuda_conv_algorithm: expected one of {', '.join(CUDA_CONV_ALGORITHMS)}, "
                           f"got {algorithm!r}")
    op = _control("set_cuda_conv_algorithm")
    if op is not None:
        op(algorithm)
    else:
        import warnings

        warnings.warn(f"irnet: the CUDA kernels are not built (or the extension is not loaded); "
                      f"set_cuda_conv_algorithm({algorithm!r}) does nothing", RuntimeWarning, stacklevel=2)
