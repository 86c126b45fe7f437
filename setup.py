"""Build irnet and its C++/CUDA extension ``irnet._C``.

The CPU sources (``csrc/*.cpp``, ``csrc/cpu/*.cpp``) are always compiled.  The CUDA
sources (``csrc/cuda/*.cu``) are compiled when torch is a CUDA build and ``nvcc`` is
found.  Environment variables:

* ``IRNET_CUDA=0|1``  force the CUDA part off / on (on fails loudly if impossible);
* ``IRNET_NO_EXTENSION=1``  build a pure-Python package (reference path only);
* ``TORCH_CUDA_ARCH_LIST``  defaults to ``8.0;9.0+PTX`` when no GPU is visible (SASS for A100 and H100, plus PTX that newer GPUs compile at load);
* ``CUDA_HOME``  found from ``nvcc --dryrun`` when unset (the nvcc on the PATH may be
  a wrapper outside the toolkit, in which case PyTorch's own guess is wrong).
"""
import glob
import os
import re
import shutil
import subprocess
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _env_flag(name):
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    return value.strip().lower() not in ("0", "false", "no", "off")


def _cuda_home_from_nvcc():
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    try:
        out = subprocess.run([nvcc, "--dryrun", "-c", "x.cu"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"TOP=(\S+)", out.stdout + out.stderr)
    if match:
        return os.path.realpath(match.group(1))
    return os.path.realpath(os.path.join(os.path.dirname(nvcc), ".."))


def _extensions():
    if _env_flag("IRNET_NO_EXTENSION"):
        return [], {}
    import torch
    from torch.utils import cpp_extension

    want_cuda = _env_flag("IRNET_CUDA")
    cuda_possible = torch.version.cuda is not None and shutil.which("nvcc") is not None
    if want_cuda and not cuda_possible:
        raise RuntimeError(
            "IRNET_CUDA=1 but the CUDA part cannot be built: torch.version.cuda=%r, nvcc on PATH: %r"
            % (torch.version.cuda, shutil.which("nvcc")))
    use_cuda = cuda_possible if want_cuda is None else want_cuda

    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    # -ffp-contract=off: no fused multiply-adds behind our back (the fused conv epilogue
    # must round like PyTorch's separate mul and add; AVX-512 targets would allow FMA)
    cxx_flags = ["-O3", "-fno-math-errno", "-ffp-contract=off", "-DIRNET_EXTENSION"]
    define_macros = []
    nvcc_flags = []
    include_dirs = [os.path.join(ROOT, "csrc")]
    if use_cuda:
        if not os.environ.get("CUDA_HOME"):
            home = _cuda_home_from_nvcc()
            if home:
                os.environ["CUDA_HOME"] = home
                cpp_extension.CUDA_HOME = home
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0+PTX"
        # The pip CUDA headers (nvidia/cu13/include) hold headers the system toolkit may lack.
        for site in sys.path:
            for sub in ("cu13", "cu12", "cuda_runtime"):
                inc = os.path.join(site, "nvidia", sub, "include")
                if os.path.isdir(inc) and inc not in include_dirs:
                    include_dirs.append(inc)
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        define_macros.append(("IRNET_WITH_CUDA", "1"))
        nvcc_flags = ["-O3", "--expt-relaxed-constexpr", "-lineinfo", "-DIRNET_EXTENSION"]
        ext_cls = cpp_extension.CUDAExtension
    else:
        ext_cls = cpp_extension.CppExtension

    # at::parallel_for is a header template: without OpenMP in *this* library it runs serially.
    link_args = []
    if sys.platform.startswith("linux"):
        cxx_flags.append("-fopenmp")
        link_args.append("-fopenmp")
    extra = {"cxx": cxx_flags}
    if use_cuda:
        extra["nvcc"] = nvcc_flags
    ext = ext_cls(
        name="irnet._C",
        sources=sources,
        include_dirs=include_dirs,
        define_macros=define_macros,
        extra_compile_args=extra,
        extra_link_args=link_args,
        py_limited_api=False,
    )
    print("irnet: building the extension with CUDA %s (%d sources)" % ("ON" if use_cuda else "OFF", len(sources)))
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(no_python_abi_suffix=False)}


ext_modules, cmdclass = _extensions()

setup(
    packages=find_packages(include=["irnet", "irnet.*"]),
    package_data={"irnet": ["data/*.npz"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
