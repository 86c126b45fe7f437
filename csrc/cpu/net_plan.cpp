// irnet CPU: a whole packed network as one call ("plan").
//
// Run module by module, a packed network pays Python and dispatcher costs at every
// layer (module call, argument checks, op dispatch, output allocation): for the CIFAR
// ResNet-20 at batch 1, about as much time as its 41M binary MACs take.  A plan is the
// network's forward as a list of steps, built once from the module graph
// (irnet/deploy/plan.py) and run here by one op call: each step calls the binary conv
// driver (csrc/cpu/xnor_cpu.cpp) or a pooling / shortcut kernel (net_steps.cpp) directly,
// or the same ATen function the module would call (float conv, BatchNorm, adaptive
// average pool, linear), so a plan gives exactly what the modules give, bit for bit.
//
// Ops (catch-all kernels; the Python side keeps the handle and releases it):
//   plan_create(Tensor[] tensors, Tensor program) -> int   validate and keep a plan
//   plan_run(int plan, Tensor x) -> Tensor                 run it on a batch
//   plan_release(int plan) -> ()
//   plan_kept_bytes(int plan) -> int                       activation memory kept between calls
// `tensors` are the network's weights and buffers, referenced by index; `program` is an
// int64 tensor of steps, each `kind, nfields, fields...` (the Step* constants below and
// irnet/deploy/plan.py agree on every field); activations live in numbered slots (slot
// 0: the input), float fields travel as the int64 bit patterns of doubles.
#include <ATen/ATen.h>
#include <ATen/record_function.h>
#include <c10/core/MemoryFormat.h>
#include <c10/util/strides.h>
#include <torch/library.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "cpu/net_steps.h"
#include "cpu/xnor_cpu.h"

namespace irnet {
namespace cpu {
namespace {

using at::Tensor;

// step kinds and their fields (in order)
enum StepKind : int64_t {
  // in, out, w, b, sh, sw, ph, pw, dh, dw, groups, clamp, lo, hi
  kConv = 1,
  // in, out, w, b, mean, var, eps, clamp, lo, hi
  kBatchNorm = 2,
  // in, out, lo, hi
  kClamp = 3,
  // in, out, kh, kw, sh, sw, ph, pw, clamp, lo, hi
  kMaxPool = 4,
  // a, b, out, clamp, lo, hi
  kAdd = 5,
  // in, out, stride, pad_lo, pad_hi
  kOptionA = 6,
  // in, out, bits, scale, in_channels, sh, sw, ph, pw, dh, dw, bias, fused, alpha, beta, residual, lo, hi
  kBinConv = 7,
  // in, out, bits, scale, in_channels, sh, sw, ph, pw, dh, dw, pkh, pkw, psh, psw, pph, ppw, alpha, beta, lo, hi
  kBinConvPool = 8,
  // in, out
  kGlobalAvgPool = 9,
  // in, out, start_dim, end_dim
  kFlatten = 10,
  // in, out, w, b
  kLinear = 11,
};

// the name a step has in torch.profiler traces ("irnet.plan.<kind>")
const char* step_name(int64_t kind) {
  switch (kind) {
    case kConv: return "irnet.plan.conv2d";
    case kBatchNorm: return "irnet.plan.batch_norm";
    case kClamp: return "irnet.plan.clamp";
    case kMaxPool: return "irnet.plan.max_pool2d";
    case kAdd: return "irnet.plan.add";
    case kOptionA: return "irnet.plan.option_a_shortcut";
    case kBinConv: return "irnet.plan.binary_conv2d";
    case kBinConvPool: return "irnet.plan.binary_conv2d_pool";
    case kGlobalAvgPool: return "irnet.plan.global_avg_pool";
    case kFlatten: return "irnet.plan.flatten";
    case kLinear: return "irnet.plan.linear";
    default: return "irnet.plan.unknown";
  }
}

int64_t fields_of(int64_t kind) {
  switch (kind) {
    case kConv: return 14;
    case kBatchNorm: return 10;
    case kClamp: return 4;
    case kMaxPool: return 11;
    case kAdd: return 6;
    case kOptionA: return 5;
    case kBinConv: return 18;
    case kBinConvPool: return 21;
    case kGlobalAvgPool: return 2;
    case kFlatten: return 4;
    case kLinear: return 4;
    default: return -1;
  }
}

double as_double(int64_t bits) {
  double d;
  std::memcpy(&d, &bits, sizeof d);
  return d;
}

struct Step {
  int64_t kind;
  std::vector<int64_t> f;
};

// Activation memory kept between the steps of a call and from one call to the next.
//
// With glibc's default settings every large activation a step frees goes back to the
// kernel (munmap, or a trim of the heap top) and the next one arrives as fresh zero pages:
// 12k page faults per forward of the fused ResNet-20 at batch 128.  A plan instead keeps
// the storage of every slot it drops (when no other tensor shares it) and hands it to a
// later step, of this call or the next, that needs at most as many bytes: the most recently
// given back of those no more than kMaxWaste times larger (the warmest in cache, as the C
// allocator's own reuse would be).  At the end of a call it releases what that call neither
// took nor gave back, so a plan holds at most one call's worth of dropped activations
// between calls.  Every step writes all of its output, so a reused buffer never leaks old
// values, and the output of a call is never kept.  Calls on several threads at once are
// safe: a buffer belongs to one call until it is given back.  The float layers' outputs
// (ATen's conv2d, ...) still come from the C allocator.  Where that allocator keeps freed
// memory itself (MALLOC_TRIM_THRESHOLD_ / MALLOC_MMAP_MAX_, jemalloc), its own reuse is as
// good or better (measured: up to ~10% faster on ResNet-18 at batch 16, same on ResNet-20):
// IRNET_PLAN_KEEP_BUFFERS=0 turns the pool off for plans made afterwards.
class BufferPool {
 public:
  // false (IRNET_PLAN_KEEP_BUFFERS=0 when the plan is made): every buffer is the C allocator's
  bool keep = true;

  // A new tensor of `sizes` in `format` (4-d), on kept memory where some fits.
  Tensor empty(at::IntArrayRef sizes, at::MemoryFormat format, const at::TensorOptions& options) {
    if (!keep) return at::empty(sizes, options.memory_format(format));
    const size_t nbytes = static_cast<size_t>(c10::multiply_integers(sizes)) * options.dtype().itemsize();
    c10::Storage storage;
    if (nbytes > 0) {
      std::lock_guard<std::mutex> lock(mutex_);
      for (size_t i = kept_.size(); i-- > 0;) {  // newest first
        const size_t have = kept_[i].storage.nbytes();
        if (have >= nbytes && have <= kMaxWaste * nbytes) {
          storage = std::move(kept_[i].storage);
          kept_.erase(kept_.begin() + static_cast<std::ptrdiff_t>(i));
          break;
        }
      }
    }
    if (!storage) return at::empty(sizes, options.memory_format(format));
    Tensor t = at::detail::make_tensor<c10::TensorImpl>(std::move(storage), c10::DispatchKeySet(options.computeDispatchKey()),
                                                        options.dtype());
    if (format == at::MemoryFormat::ChannelsLast)
      t.unsafeGetTensorImpl()->set_sizes_and_strides(sizes, c10::get_channels_last_strides_2d(sizes));
    else
      t.unsafeGetTensorImpl()->set_sizes_and_strides(sizes, c10::contiguous_strides(sizes));
    return t;
  }

  // Keep `t`'s memory if `t` is the only holder of it (not a view, not the caller's).
  void give_back(Tensor t, uint64_t call) {
    if (!keep) return;
    if (!t.defined() || t.use_count() != 1 || !t.has_storage() || t.storage().use_count() != 1 ||
        t.storage().nbytes() == 0 || !t.storage().resizable())
      return;
    c10::Storage storage = t.storage();
    t.reset();
    std::lock_guard<std::mutex> lock(mutex_);
    kept_.push_back(Kept{std::move(storage), call});
  }

  // Release what was kept before `call` and not reused by it (the memory goes after the lock).
  void end_call(uint64_t call) {
    std::vector<c10::Storage> release;
    std::lock_guard<std::mutex> lock(mutex_);
    size_t still_kept = 0;
    for (size_t i = 0; i < kept_.size(); ++i) {
      if (kept_[i].call < call)
        release.push_back(std::move(kept_[i].storage));
      else if (still_kept++ != i)
        kept_[still_kept - 1] = std::move(kept_[i]);
    }
    kept_.resize(still_kept);
  }

  uint64_t begin_call() { return next_call_.fetch_add(1) + 1; }

  int64_t kept_bytes() {
    std::lock_guard<std::mutex> lock(mutex_);
    int64_t total = 0;
    for (const Kept& k : kept_) total += static_cast<int64_t>(k.storage.nbytes());
    return total;
  }

 private:
  static constexpr size_t kMaxWaste = 4;
  struct Kept {
    c10::Storage storage;
    uint64_t call;  // the call that gave it back
  };
  std::mutex mutex_;
  std::vector<Kept> kept_;  // in the order given back
  std::atomic<uint64_t> next_call_{0};
};

struct Plan {
  mutable BufferPool pool;
  std::vector<Tensor> tensors;
  std::vector<Step> steps;
  int64_t slots = 1;
  int64_t out_slot = 0;
  // drop[i]: the slots whose last reader is step i: their tensors go back to `pool`
  // right after it (so a deep network reuses a few activations' memory)
  std::vector<std::vector<int64_t>> drop;

  const Tensor& t(int64_t i) const { return tensors[static_cast<size_t>(i)]; }
  std::optional<Tensor> opt(int64_t i) const {
    return i < 0 ? std::nullopt : std::optional<Tensor>(tensors[static_cast<size_t>(i)]);
  }
};

int64_t out_size(int64_t size, int64_t k, int64_t s, int64_t p, int64_t d) { return (size + 2 * p - d * (k - 1) - 1) / s + 1; }

// The binary conv of a kBinConv / kBinConvPool step into a new tensor (fused: its epilogue).
Tensor bin_conv(const Plan& plan, const std::vector<int64_t>& f, const Tensor& x, const std::vector<Tensor>& slots,
                bool fused_step) {
  const Tensor& bits = plan.t(f[2]);
  const int64_t sh = f[5], sw = f[6], ph = f[7], pw = f[8], dh = f[9], dw = f[10];
  const int64_t O = bits.size(0), kh = bits.size(1), kw = bits.size(2);
  const at::MemoryFormat format = layout_of(x);
  const bool cl = format == at::MemoryFormat::ChannelsLast;
  Tensor out = plan.pool.empty({x.size(0), O, out_size(x.size(2), kh, sh, ph, dh), out_size(x.size(3), kw, sw, pw, dw)},
                               format, x.options());
  const std::optional<Tensor> scale = plan.opt(f[3]);
  if (fused_step && f[12]) {
    const std::optional<Tensor> residual =
        f[15] < 0 ? std::nullopt : std::optional<Tensor>(slots[static_cast<size_t>(f[15])]);
    const FusedArgs fused{plan.t(f[13]), plan.t(f[14]), residual, as_double(f[16]), as_double(f[17])};
    xnor_conv2d_cpu_into(x, bits, scale, f[4], {sh, sw}, {ph, pw}, {dh, dw}, cl, &fused, out);
  } else {
    xnor_conv2d_cpu_into(x, bits, scale, f[4], {sh, sw}, {ph, pw}, {dh, dw}, cl, nullptr, out);
  }
  return out;
}

Tensor run_plan(const Plan& plan, const Tensor& x) {
  const uint64_t call = plan.pool.begin_call();
  std::vector<Tensor> slots(static_cast<size_t>(plan.slots));
  slots[0] = x;
  auto in = [&](int64_t s) -> const Tensor& { return slots[static_cast<size_t>(s)]; };
  for (const Step& step : plan.steps) {
    const std::vector<int64_t>& f = step.f;
    RECORD_FUNCTION(step_name(step.kind), std::vector<c10::IValue>());
    Tensor y;
    switch (step.kind) {
      case kConv:
        y = at::conv2d(in(f[0]), plan.t(f[2]), plan.opt(f[3]), {f[4], f[5]}, {f[6], f[7]}, {f[8], f[9]}, f[10]);
        if (f[11]) clamp_inplace(y, float(as_double(f[12])), float(as_double(f[13])));
        break;
      case kBatchNorm:
        y = at::batch_norm(in(f[0]), plan.opt(f[2]), plan.opt(f[3]), plan.t(f[4]), plan.t(f[5]), false, 0.0,
                           as_double(f[6]), true);
        if (f[7]) clamp_inplace(y, float(as_double(f[8])), float(as_double(f[9])));
        break;
      case kClamp:
        y = in(f[0]).clone(layout_of(in(f[0])));
        clamp_inplace(y, float(as_double(f[2])), float(as_double(f[3])));
        break;
      case kMaxPool: {
        const Tensor& xi = in(f[0]);
        y = plan.pool.empty({xi.size(0), xi.size(1), (xi.size(2) + 2 * f[6] - f[2]) / f[4] + 1,
                             (xi.size(3) + 2 * f[7] - f[3]) / f[5] + 1},
                            layout_of(xi), xi.options());
        PoolEpilogue epi;
        epi.clamp = f[8] != 0;
        epi.lo = float(as_double(f[9]));
        epi.hi = float(as_double(f[10]));
        max_pool2d_into(xi, {f[2], f[3]}, {f[4], f[5]}, {f[6], f[7]}, epi, y);
        break;
      }
      case kAdd:
        y = at::add(in(f[0]), in(f[1]));
        if (f[3]) clamp_inplace(y, float(as_double(f[4])), float(as_double(f[5])));
        break;
      case kOptionA: {
        const Tensor& xi = in(f[0]);
        const int64_t s = f[2];
        y = plan.pool.empty({xi.size(0), xi.size(1) + f[3] + f[4], (xi.size(2) + s - 1) / s, (xi.size(3) + s - 1) / s},
                            layout_of(xi), xi.options());
        option_a_shortcut_into(xi, s, f[3], f[4], y);
        break;
      }
      case kBinConv:
        y = bin_conv(plan, f, in(f[0]), slots, true);
        if (f[11] >= 0) y.add_(plan.t(f[11]).reshape({1, -1, 1, 1}));
        break;
      case kBinConvPool: {
        Tensor conv = bin_conv(plan, f, in(f[0]), slots, false);
        y = plan.pool.empty({conv.size(0), conv.size(1), (conv.size(2) + 2 * f[15] - f[11]) / f[13] + 1,
                             (conv.size(3) + 2 * f[16] - f[12]) / f[14] + 1},
                            layout_of(conv), conv.options());
        PoolEpilogue epi;
        epi.alpha = plan.t(f[17]).const_data_ptr<float>();
        epi.beta = plan.t(f[18]).const_data_ptr<float>();
        epi.clamp = true;
        epi.lo = float(as_double(f[19]));
        epi.hi = float(as_double(f[20]));
        max_pool2d_into(conv, {f[11], f[12]}, {f[13], f[14]}, {f[15], f[16]}, epi, y);
        plan.pool.give_back(std::move(conv), call);
        break;
      }
      case kGlobalAvgPool:
        y = at::adaptive_avg_pool2d(in(f[0]), {1, 1});
        break;
      case kFlatten:
        y = at::flatten(in(f[0]), f[2], f[3]);
        break;
      case kLinear:
        y = at::linear(in(f[0]), plan.t(f[2]), plan.opt(f[3]));
        break;
      default:
        TORCH_CHECK(false, "irnet::plan_run: unknown step kind ", step.kind);
    }
    slots[static_cast<size_t>(f[1 + (step.kind == kAdd)])] = std::move(y);
    for (const int64_t s : plan.drop[static_cast<size_t>(&step - plan.steps.data())])
      plan.pool.give_back(std::move(slots[static_cast<size_t>(s)]), call);
  }
  Tensor out = std::move(slots[static_cast<size_t>(plan.out_slot)]);
  slots.clear();
  plan.pool.end_call(call);
  return out;
}

// ------------------------------------------------------------------ the plans kept
std::mutex g_plans_mutex;
std::unordered_map<int64_t, std::shared_ptr<const Plan>> g_plans;
int64_t g_next_plan = 1;

// Which fields of a step are slots (read or written) and which are tensor indices
// (-1 allowed where optional), so that a malformed program is refused at creation.
// The slots a step reads.
std::vector<int64_t> reads(const Step& s) {
  const auto& f = s.f;
  switch (s.kind) {
    case kAdd: return {f[0], f[1]};
    case kBinConv: return f[12] && f[15] >= 0 ? std::vector<int64_t>{f[0], f[15]} : std::vector<int64_t>{f[0]};
    default: return {f[0]};
  }
}

void validate(const Plan& p, const Step& s) {
  const auto& f = s.f;
  const int64_t nt = static_cast<int64_t>(p.tensors.size());
  auto slot = [&](int64_t v) {
    TORCH_CHECK(v >= 0 && v < p.slots, "irnet::plan_create: slot ", v, " out of range (", p.slots, " slots)");
  };
  auto tensor = [&](int64_t v, bool optional) {
    TORCH_CHECK((optional && v == -1) || (v >= 0 && v < nt), "irnet::plan_create: tensor index ", v,
                " out of range (", nt, " tensors)");
  };
  switch (s.kind) {
    case kConv: slot(f[0]), slot(f[1]), tensor(f[2], false), tensor(f[3], true); break;
    case kBatchNorm:
      slot(f[0]), slot(f[1]), tensor(f[2], true), tensor(f[3], true), tensor(f[4], false), tensor(f[5], false);
      break;
    case kClamp: case kMaxPool: case kOptionA: case kGlobalAvgPool: case kFlatten: slot(f[0]), slot(f[1]); break;
    case kAdd: slot(f[0]), slot(f[1]), slot(f[2]); break;
    case kBinConv:
      slot(f[0]), slot(f[1]), tensor(f[2], false), tensor(f[3], true), tensor(f[11], true);
      if (f[12]) {
        tensor(f[13], false), tensor(f[14], false);
        if (f[15] >= 0) slot(f[15]);
      }
      break;
    case kBinConvPool:
      slot(f[0]), slot(f[1]), tensor(f[2], false), tensor(f[3], true), tensor(f[17], false), tensor(f[18], false);
      TORCH_CHECK(p.t(f[17]).scalar_type() == at::kFloat && p.t(f[18]).scalar_type() == at::kFloat &&
                      p.t(f[17]).is_contiguous() && p.t(f[18]).is_contiguous() &&
                      p.t(f[17]).numel() == p.t(f[2]).size(0) && p.t(f[18]).numel() == p.t(f[2]).size(0),
                  "irnet::plan_create: a pooled binary conv needs float32 alpha and beta, one per output channel");
      break;
    case kLinear: slot(f[0]), slot(f[1]), tensor(f[2], false), tensor(f[3], true); break;
    default: TORCH_CHECK(false, "irnet::plan_create: unknown step kind ", s.kind);
  }
}

int64_t plan_create(const std::vector<Tensor>& tensors, const Tensor& program) {
  TORCH_CHECK(program.scalar_type() == at::kLong && program.dim() == 1 && program.device().is_cpu(),
              "irnet::plan_create: expected the program as a 1-d int64 CPU tensor, got ", program.scalar_type(), " ",
              program.sizes());
  const Tensor prog = program.contiguous();
  const int64_t* p = prog.const_data_ptr<int64_t>();
  const int64_t n = prog.numel();
  TORCH_CHECK(n >= 2, "irnet::plan_create: expected a program that starts with (slots, out_slot)");
  auto plan = std::make_shared<Plan>();
  plan->tensors = tensors;
  const char* keep_buffers = std::getenv("IRNET_PLAN_KEEP_BUFFERS");
  plan->pool.keep = keep_buffers == nullptr || std::strcmp(keep_buffers, "0") != 0;
  for (const Tensor& t : tensors)
    TORCH_CHECK(t.device().is_cpu(), "irnet::plan_create: expected every tensor of a plan on the CPU, got ", t.device());
  plan->slots = p[0];
  plan->out_slot = p[1];
  TORCH_CHECK(plan->slots >= 1 && plan->out_slot >= 0 && plan->out_slot < plan->slots,
              "irnet::plan_create: bad slot count ", plan->slots, " or output slot ", plan->out_slot);
  for (int64_t i = 2; i < n;) {
    TORCH_CHECK(i + 1 < n, "irnet::plan_create: truncated program at ", i);
    Step s;
    s.kind = p[i];
    const int64_t nf = p[i + 1];
    TORCH_CHECK(fields_of(s.kind) >= 0, "irnet::plan_create: unknown step kind ", s.kind, " at ", i);
    TORCH_CHECK(nf == fields_of(s.kind) && i + 2 + nf <= n, "irnet::plan_create: step ", plan->steps.size(),
                " (kind ", s.kind, ") has ", nf, " fields, expected ", fields_of(s.kind));
    s.f.assign(p + i + 2, p + i + 2 + nf);
    validate(*plan, s);
    plan->steps.push_back(std::move(s));
    i += 2 + nf;
  }
  // each slot's last reader (the input slot 0 is the caller's and the output the result: kept)
  std::vector<int64_t> last(static_cast<size_t>(plan->slots), -1);
  for (size_t i = 0; i < plan->steps.size(); ++i)
    for (const int64_t r : reads(plan->steps[i])) last[static_cast<size_t>(r)] = static_cast<int64_t>(i);
  plan->drop.assign(plan->steps.size(), {});
  for (int64_t slot = 1; slot < plan->slots; ++slot)
    if (slot != plan->out_slot && last[static_cast<size_t>(slot)] >= 0)
      plan->drop[static_cast<size_t>(last[static_cast<size_t>(slot)])].push_back(slot);
  std::lock_guard<std::mutex> lock(g_plans_mutex);
  const int64_t id = g_next_plan++;
  g_plans[id] = std::move(plan);
  return id;
}

std::shared_ptr<const Plan> find_plan(int64_t id, const char* op) {
  std::lock_guard<std::mutex> lock(g_plans_mutex);
  const auto it = g_plans.find(id);
  TORCH_CHECK(it != g_plans.end(), "irnet::", op, ": no plan ", id, " (released, or never created)");
  return it->second;
}

Tensor plan_run(int64_t id, const Tensor& x) {
  const std::shared_ptr<const Plan> plan = find_plan(id, "plan_run");
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() == 4,
              "irnet::plan_run: expected a float32 CPU input (N, C, H, W), got ", x.scalar_type(), " ", x.sizes(),
              " on ", x.device());
  const Tensor xc = x.is_contiguous() || channels_last_layout(x) ? x : x.contiguous();
  return run_plan(*plan, xc);
}

int64_t plan_kept_bytes(int64_t id) { return find_plan(id, "plan_kept_bytes")->pool.kept_bytes(); }

void plan_release(int64_t id) {
  std::lock_guard<std::mutex> lock(g_plans_mutex);
  g_plans.erase(id);
}

}  // namespace
}  // namespace cpu
}  // namespace irnet

TORCH_LIBRARY_FRAGMENT(irnet, m) {
  m.def("plan_create(Tensor[] tensors, Tensor program) -> int", &irnet::cpu::plan_create);
  m.def("plan_run(int plan, Tensor x) -> Tensor", &irnet::cpu::plan_run);
  m.def("plan_release(int plan) -> ()", &irnet::cpu::plan_release);
  m.def("plan_kept_bytes(int plan) -> int", &irnet::cpu::plan_kept_bytes);
}
