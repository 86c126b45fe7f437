"""One small call of every irnet CUDA kernel, for compute-sanitizer.

benchmarks/gpu_check.sh runs this file under ``compute-sanitizer --tool memcheck`` and
``--tool racecheck``: small odd shapes (channel tails, stride 2, dilation, padding wider
than half the kernel, batch 1, an empty batch), every CUDA conv algorithm the build offers
(``irnet.ops.cuda_conv_algorithms()``: e.g. popc and mma, each forced) for
``xnor_conv2d`` (packed and float input, NCHW and channels_last output) and
``xnor_conv2d_fused``, ``xnor_linear``, ``pack_bits`` in every float dtype, ``libra_pb``
(+ backward, + pack) and ``sign_ede`` (+ backward).  The device synchronizes after every
case, so an error is reported at the case that made it.

The bit-exact ops (packing, the binary conv / linear / fused conv, sign) are also compared
with irnet.reference on the CPU (``torch.equal``); for the float training ops only the
shapes and dtypes are checked here (their numerics are tests/test_cuda_ops.py's job), so a
failure of this script under the sanitizer means a memory error, a race, a kernel error or
a wrong binary result.  The last line says how many cases ran and how many failed; the
exit status is 0 only if every case ran and matched.

    python benchmarks/gpu_sanitize_cases.py                 # on the GPU, without a sanitizer
    compute-sanitizer --tool memcheck python benchmarks/gpu_sanitize_cases.py
    python benchmarks/gpu_sanitize_cases.py --device cpu    # checks this script without a GPU
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# ops that must have a compiled CUDA kernel for this script to mean anything
REQUIRED_CUDA_OPS = ("pack_bits", "xnor_conv2d", "xnor_linear", "libra_pb", "libra_pb_backward", "libra_pb_pack",
                     "sign_ede", "sign_ede_backward")

# (N, C, H, W, O, (kh, kw), stride, padding, dilation): each a different corner
CONV_SHAPES = [
    (2, 67, 9, 11, 13, (3, 3), (2, 1), (1, 2), (1, 2)),   # channel tail (67 = 64 + 3), stride, dilation
    (1, 256, 6, 5, 40, (3, 3), (1, 1), (1, 1), (1, 1)),   # whole 256-bit k steps, O not a tile multiple
    (3, 5, 4, 7, 9, (1, 3), (1, 2), (0, 4), (1, 1)),      # 5 channels, padding wider than the kernel
    (0, 67, 5, 5, 8, (3, 3), (1, 1), (1, 1), (1, 1)),     # empty batch
]


def conv_algorithms(ops):
    """(names to force, a line saying what the build offers)."""
    names = list(ops.cuda_conv_algorithms())
    forced = [n for n in names if n != "auto"] or [None]
    current = ops.cuda_conv_algorithm()
    return forced, f"CUDA conv algorithms offered: {names} (setting now: {current}); each forced in turn: {forced}"


class Cases:
    """Runs named cases, synchronizing after each; counts what failed and why."""

    def __init__(self, torch, device):
        self.torch, self.device = torch, device
        self.ran, self.failed = 0, []

    def run(self, name, fn):
        self.ran += 1
        try:
            problem = fn()
            if self.device.type == "cuda":
                self.torch.cuda.synchronize()
        except Exception as exc:  # a kernel error, a failed check: report it, go on with the next case
            problem = f"{type(exc).__name__}: {exc}"
            traceback.print_exc(limit=4)
        if problem:
            self.failed.append(name)
            print(f"case {name}: FAIL {problem}", flush=True)
        else:
            print(f"case {name}: ok", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default) | cpu (runs the same cases on the CPU kernels: "
                                                    "a check of this script, not of any GPU kernel)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import torch

    sys.path.insert(0, ROOT)
    import irnet
    from irnet import ops
    from irnet import reference as ref

    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            print("gpu_sanitize_cases: no CUDA device (torch.cuda.is_available() is False); nothing was run")
            return 2
        missing = [op for op in REQUIRED_CUDA_OPS if not ops.has_compiled_kernel(op, "cuda")]
        if missing:
            print(f"gpu_sanitize_cases: no compiled CUDA kernel for {missing} (irnet._C: "
                  f"{irnet._ext.ERROR or 'loaded, built without CUDA'}); these would run irnet.reference, which is "
                  "not what a sanitizer run is for. Build with IRNET_CUDA=1. Nothing was run.")
            return 2
        print(f"gpu_sanitize_cases on {torch.cuda.get_device_name(0)} (torch {torch.__version__}, CUDA "
              f"{torch.version.cuda})")
    else:
        print("gpu_sanitize_cases on the CPU: a check of this script's plumbing, NOT of the CUDA kernels")
    fused_kernel = ops.has_compiled_kernel("xnor_conv2d_fused", device.type)
    print(f"xnor_conv2d_fused on {device.type}: "
          + ("compiled kernel" if fused_kernel else "no compiled kernel (conv, then the epilogue as PyTorch ops)"))
    algorithms, line = conv_algorithms(ops) if device.type == "cuda" else ([None], "CPU run: default conv algorithm")
    print(line)

    gen = torch.Generator().manual_seed(args.seed)
    cases = Cases(torch, device)
    dev = lambda t: t.to(device)  # noqa: E731  (inputs are drawn on the CPU: the same values on any device)

    def randn(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)

    def shaped(name, got, shape, dtype):
        if got.shape != torch.Size(shape) or got.dtype != dtype:
            return f"{name}: got {got.dtype} {tuple(got.shape)}, expected {dtype} {tuple(shape)}"
        return None

    def same(name, got, expect):
        got = got.cpu()
        problem = shaped(name, got, expect.shape, expect.dtype)
        if problem:
            return problem
        if not torch.equal(got, expect):
            bad = (got != expect) & ~(got.isnan() & expect.isnan()) if got.is_floating_point() else got != expect
            return f"{name}: {int(bad.sum())} of {got.numel()} values differ from irnet.reference"
        return None

    # ---- pack_bits: every float dtype, NCHW and channels_last, 2-d
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        x = randn(3, 67, 5, 7, dtype=dtype)
        cases.run(f"pack_bits {str(dtype)[6:]} (3,67,5,7)",
                  lambda x=x: same("bits", ops.pack_bits(dev(x)), ref.pack_bits(x)))
    x = randn(3, 67, 5, 7).contiguous(memory_format=torch.channels_last)
    cases.run("pack_bits float32 channels_last", lambda: same("bits", ops.pack_bits(dev(x)), ref.pack_bits(x)))
    x2 = randn(5, 130)
    cases.run("pack_bits float32 (5,130)", lambda: same("bits", ops.pack_bits(dev(x2)), ref.pack_bits(x2)))

    # ---- the binary conv, each algorithm forced; the fused conv; packed and float input
    restore = ops.cuda_conv_algorithm() if algorithms != [None] else None
    for algo in algorithms:
        tag = algo or "default"
        if algo is not None:
            ops.set_cuda_conv_algorithm(algo)
        for n, c, h, w, o, (kh, kw), stride, padding, dilation in CONV_SHAPES:
            x = randn(n, c, h, w)
            wt = randn(o, c, kh, kw)
            scale = randn(o).abs() + 0.5
            xb, wb = ref.pack_bits(x), ref.pack_bits(wt)
            shape = f"{n}x{c}x{h}x{w} -> {o} k{kh}x{kw} s{stride} p{padding} d{dilation}"
            for cl in (False, True):
                def conv(cl=cl, xb=xb, wb=wb, scale=scale, c=c, stride=stride, padding=padding, dilation=dilation):
                    got = torch.ops.irnet.xnor_conv2d(dev(xb), dev(wb), dev(scale), c, list(stride), list(padding),
                                                      list(dilation), cl)
                    expect = ref.xnor_conv2d_bits(xb, wb, scale, c, stride, padding, dilation)
                    if cl and got.numel() and not got.is_contiguous(memory_format=torch.channels_last):
                        return "channels_last=True but the result is not channels_last"
                    return same("y", got.contiguous(), expect)
                cases.run(f"xnor_conv2d [{tag}] packed {shape} channels_last={cl}", conv)

            def conv_float(x=x, wt=wt, stride=stride, padding=padding, dilation=dilation, c=c):
                pw = ops.pack_conv_weight(dev(wt))  # no scale: the unscaled dot
                got = ops.xnor_conv2d(dev(x), pw, stride, padding, dilation)
                return same("y", got, ref.xnor_conv2d_bits(ref.pack_bits(x), ref.pack_bits(wt), None, c, stride,
                                                           padding, dilation))
            cases.run(f"xnor_conv2d [{tag}] float input, no scale {shape}", conv_float)

            ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
            wo = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
            alpha, beta = randn(o), randn(o)
            residual = randn(n, o, ho, wo)
            for res, lo, hi, cl in ((residual, -1.0, 1.0, False), (None, 0.0, float("inf"), True)):
                def fused(res=res, lo=lo, hi=hi, cl=cl, xb=xb, wb=wb, scale=scale, c=c, stride=stride,
                          padding=padding, dilation=dilation, alpha=alpha, beta=beta):
                    got = torch.ops.irnet.xnor_conv2d_fused(
                        dev(xb), dev(wb), dev(scale), c, list(stride), list(padding), list(dilation), cl, dev(alpha),
                        dev(beta), None if res is None else dev(res), lo, hi)
                    expect = ref.xnor_conv2d_fused_bits(xb, wb, scale, c, stride, padding, dilation, alpha, beta, res,
                                                        lo, hi)
                    return same("y", got.contiguous(), expect)
                what = "residual, clamp [-1, 1]" if res is not None else "no residual, ReLU, channels_last"
                cases.run(f"xnor_conv2d_fused [{tag}] {shape} {what}", fused)
    if restore is not None:
        ops.set_cuda_conv_algorithm(restore)

    # ---- xnor_linear
    for n, c, o, scaled in ((5, 130, 7, True), (33, 64, 9, False), (0, 70, 3, True)):
        x, wt = randn(n, c), randn(o, c)
        scale = randn(o).abs() + 0.5 if scaled else None

        def linear(x=x, wt=wt, scale=scale, c=c):
            xb, wb = ref.pack_bits(x), ref.pack_bits(wt)
            got = torch.ops.irnet.xnor_linear(dev(xb), dev(wb), None if scale is None else dev(scale), c)
            return same("y", got, ref.xnor_linear_bits(xb, wb, scale, c))
        cases.run(f"xnor_linear {n}x{c} -> {o} scale={'yes' if scaled else 'no'}", linear)

    # ---- Libra-PB forward, backward, pack; sign / EDE forward, backward
    k, t = 2.0, 0.5
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        for shape in ((13, 67, 3, 3), (4, 1), (3, 0)):
            wt = randn(*shape, dtype=dtype)
            if shape == (13, 67, 3, 3):
                wt[1] = 0.3  # a constant channel: sigma 0, v 0
            name = f"{str(dtype)[6:]} {shape}"

            def libra(wt=wt, shape=shape, dtype=dtype):
                kk, tt = ops._ede_params(k, t, dev(wt))
                wb, v, inv_sigma, scale = torch.ops.irnet.libra_pb(dev(wt), kk, tt)
                g = dev(randn(*shape, dtype=dtype))
                gw = torch.ops.irnet.libra_pb_backward(g, v, inv_sigma, scale, kk, tt)
                return (shaped("wb", wb, shape, dtype) or shaped("v", v, shape, dtype)
                        or shaped("scale", scale, shape[:1], dtype) or shaped("grad_w", gw, shape, dtype))
            cases.run(f"libra_pb + libra_pb_backward {name}", libra)
        wt = randn(13, 67, 3, 3, dtype=dtype)

        def pack(wt=wt):
            bits, scale = torch.ops.irnet.libra_pb_pack(dev(wt))
            return shaped("bits", bits, (13, 3, 3, 2), torch.int64) or shaped("scale", scale, (13,), scale.dtype)
        cases.run(f"libra_pb_pack {str(dtype)[6:]} (13,67,3,3)", pack)

        x = randn(3, 67, 5, 7, dtype=dtype)
        x[0, 0, 0, :3] = torch.tensor([0.0, -0.0, float("nan")], dtype=dtype)

        def ede(x=x, dtype=dtype):
            kk, tt = ops._ede_params(k, t, dev(x))
            y = torch.ops.irnet.sign_ede(dev(x), kk, tt)
            gx = torch.ops.irnet.sign_ede_backward(dev(torch.ones_like(x)), dev(x), kk, tt)
            return same("sign", y, ref.sign(x)) or shaped("grad_x", gx, x.shape, dtype)
        cases.run(f"sign_ede + sign_ede_backward {str(dtype)[6:]} (3,67,5,7)", ede)

    ok = not cases.failed
    print(f"gpu_sanitize_cases: {cases.ran} cases run on {device.type}, {len(cases.failed)} failed"
          + ("" if ok else ": " + "; ".join(cases.failed)))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
