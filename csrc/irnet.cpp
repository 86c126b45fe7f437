// irnet: every operator schema, declared once.
//
// CPU kernels are registered in csrc/cpu/*.cpp, CUDA kernels in csrc/cuda/*.cu
// (TORCH_LIBRARY_IMPL(irnet, <key>, m)); fake (meta) kernels and autograd formulas
// are registered from Python in irnet/ops/ (fake.py, autograd.py).  Where a backend has no kernel for an
// op, irnet/ops/registry.py registers the pure-PyTorch reference (irnet/reference.py) for it.
//
// Bit layout shared by every kernel (csrc/core/bitpack.h): a float tensor of shape
// (N, C, *S) packs to int64 words of shape (N, *S, ceil(C/64)); channel c lives in
// word c/64, bit c%64; the bit is 1 iff the value is < 0 (it stands for -1), so
// -0.0 and NaN pack to 0 (+1).  Tail bits past C are always 0.
#include <torch/library.h>

#include <Python.h>

TORCH_LIBRARY(irnet, m) {
  // ---- training ops ------------------------------------------------------
  // y = sign(x) (+1 at 0); backward of the autograd formula: EDE,
  // grad_x = grad * k * t * (1 - tanh(t*x)^2).
  m.def("sign_ede(Tensor x, Tensor k, Tensor t) -> Tensor");
  m.def("sign_ede_backward(Tensor grad, Tensor x, Tensor k, Tensor t) -> Tensor");
  // Libra-PB on w of shape (C_out, ...): returns (wb, v, inv_sigma, scale) with
  // v the standardized weight, inv_sigma = 1/sigma (0 where sigma == 0), scale the
  // per-channel power of two, wb = sign(v) * scale.  Only wb is differentiable.
  m.def("libra_pb(Tensor w, Tensor k, Tensor t) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("libra_pb_backward(Tensor grad_wb, Tensor v, Tensor inv_sigma, Tensor scale, Tensor k, Tensor t) -> Tensor");
  // ---- inference ops -------------------------------------------------------
  // sign-and-pack (N, C, *S) float -> (N, *S, ceil(C/64)) int64.
  m.def("pack_bits(Tensor x) -> Tensor");
  // Libra-PB for deployment: packed sign(v) of shape (C_out, *S, words) and scale (C_out,).
  m.def("libra_pb_pack(Tensor w) -> (Tensor, Tensor)");
  // XNOR-popcount conv on packed operands x_bits (N, H, W, words), w_bits (O, kh, kw, words):
  // y[n, o, p, q] = scale[o] * sum over in-frame taps of (C - 2 popcount(x ^ w)), float32 NCHW
  // (channels_last: that layout).  x_bits may also be the float activations (N, C, H, W)
  // themselves: the op packs their signs (bit = x < 0) as pack_bits would.
  m.def("xnor_conv2d(Tensor x_bits, Tensor w_bits, Tensor? scale, int in_channels, int[2] stride, int[2] padding, int[2] dilation, bool channels_last=False) -> Tensor");
  // xnor_conv2d with the layers after it folded in (a BatchNorm, a residual add, a clamping
  // activation): y = clamp((conv * alpha[o] + beta[o]) + residual, act_min, act_max), each
  // operation rounded as PyTorch's separate ops round it; residual shaped like the output.
  m.def("xnor_conv2d_fused(Tensor x_bits, Tensor w_bits, Tensor? scale, int in_channels, int[2] stride, int[2] padding, int[2] dilation, bool channels_last, Tensor alpha, Tensor beta, Tensor? residual, float act_min, float act_max) -> Tensor");
  // y[n, o] = scale[o] * (in_features - 2 popcount(x_bits[n] ^ w_bits[o])), float32.
  m.def("xnor_linear(Tensor x_bits, Tensor w_bits, Tensor? scale, int in_features) -> Tensor");
}

// Importing irnet._C as a Python module loads this library (and so registers the ops).
static struct PyModuleDef irnet_module = {PyModuleDef_HEAD_INIT, "_C", "irnet's compiled operators (torch.ops.irnet.*)", -1, nullptr};
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&irnet_module); }
