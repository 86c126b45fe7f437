#!/usr/bin/env bash
# The first GPU session's one command: on a machine with a CUDA GPU, PyTorch, nvcc and
# ninja (no network needed), from the repository root:
#
#     bash benchmarks/gpu_check.sh
#
# In under 9 minutes (--budget, default 520 s, each step clipped to what is left) it
#   env        records the machine: GPU, driver, torch, CUDA, nvcc, the Python packages;
#   build      builds irnet's extension in place against the torch found there
#              (IRNET_CUDA=1, TORCH_CUDA_ARCH_LIST = the visible GPU's capability) and
#              checks that irnet._C is this tree's and has its CUDA kernels;
#   tests      runs tests/test_cuda_ops.py and every tests/test_cuda_*.py (pytest; without
#              pytest it says so and runs benchmarks/gpu_sanitize_cases.py as a smoke test);
#   memcheck   compute-sanitizer --tool memcheck  on benchmarks/gpu_sanitize_cases.py
#   racecheck  compute-sanitizer --tool racecheck on the same (one small case of every
#              CUDA kernel, every conv algorithm, the fused conv);
#   train      one epoch of `python -m irnet.train --preset demo --device cuda`, then the
#   train_amp  same with --amp (fp16 autocast + GradScaler); each checks the packed
#              model's predictions (irnet.deploy) that the run prints;
#   bench      benchmarks/bench_cuda_conv.py (conv vs cuDNN / int8, training ops vs
#              torch.compile, a training step), with its targets;
# and prints a summary table LAST (each step: PASS / FAIL / SKIP, its time, a note).
# Each step runs under its own timeout, and a failing step does not stop the next.
# Logs: $OUT if set (the device tool returns what is written there), else benchmarks/out/:
#   gpu_check.log (every step's full output), gpu_check.json (the summary),
#   bench_cuda_conv.json / .png (the benchmark).
# Exit status: 0 every step passed; 1 a step failed; 3 none failed but one was skipped
# (e.g. no compute-sanitizer: the check is incomplete); 2 no GPU (one line says so; nothing
# is run).  Options: --budget S, --only a,b, --skip a,b, --no-gpu-ok (testing aid: run the
# steps without a GPU, to check this script; every GPU step then fails or skips), -h.
# Environment: PYTHON (the interpreter), GPU_CHECK_ARCH (TORCH_CUDA_ARCH_LIST), MAX_JOBS,
# GPU_CHECK_CAP_<STEP>=S (a step's own timeout, e.g. GPU_CHECK_CAP_BUILD=600),
# GPU_CHECK_TRAIN_ARGS (more flags for the two training runs, e.g. "--train-limit 2048"),
# GPU_CHECK_BENCH_ARGS (more flags for the benchmark, e.g. "--no-compile").
# (the step functions below run in child shells, by name: shellcheck cannot see the calls)
# shellcheck disable=SC2317
set -u -o pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2

STEPS="env build tests memcheck racecheck train train_amp bench"
BUDGET_S=${GPU_CHECK_BUDGET_S:-520}
ONLY=""
SKIP=""
NO_GPU_OK=0
while [ $# -gt 0 ]; do
  case "$1" in
    --budget) BUDGET_S=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    --skip) SKIP=$2; shift 2 ;;
    --no-gpu-ok) NO_GPU_OK=1; shift ;;
    -h|--help) sed -n '2,34p' "$0" | sed 's/^# \{0,1\}//'; echo "steps: $STEPS"; exit 0 ;;
    *) echo "gpu_check: unknown argument '$1' (see --help)"; exit 2 ;;
  esac
done
case "$BUDGET_S" in ''|*[!0-9]*) echo "gpu_check: --budget takes whole seconds, got '$BUDGET_S'"; exit 2 ;; esac
for s in ${ONLY//,/ } ${SKIP//,/ }; do
  case " $STEPS " in *" $s "*) ;; *) echo "gpu_check: unknown step '$s' (steps: $STEPS)"; exit 2 ;; esac
done

# The Python that has torch: $PYTHON, else python3, else python.
PY=""
for cand in ${PYTHON:-} python3 python; do
  if command -v "$cand" >/dev/null 2>&1 && "$cand" -c "import torch" >/dev/null 2>&1; then PY=$(command -v "$cand"); break; fi
done
if [ -z "$PY" ]; then
  echo "gpu_check: no Python with torch found (tried \$PYTHON, python3, python); nothing was run."
  exit 2
fi

GPU_INFO=$("$PY" -c "
import torch
if torch.cuda.is_available():
    print('yes|%s|%d.%d|%s' % ((torch.cuda.get_device_name(0),) + torch.cuda.get_device_capability(0) + (torch.__version__,)))
else:
    print('no|||%s' % torch.__version__)
" 2>/dev/null | tail -n 1)
IFS='|' read -r HAS_GPU GPU_NAME GPU_CAP TORCH_VERSION <<< "$GPU_INFO"
if [ "$HAS_GPU" != "yes" ]; then
  if [ "$NO_GPU_OK" != 1 ]; then
    smi="nvidia-smi not found"
    command -v nvidia-smi >/dev/null 2>&1 && smi="nvidia-smi -L: $(nvidia-smi -L 2>&1 | head -n 1)"
    echo "gpu_check: no CUDA GPU visible (torch ${TORCH_VERSION:-?}: torch.cuda.is_available() is False; $smi); this check needs a GPU, nothing was run."
    exit 2
  fi
  GPU_NAME="NO GPU (--no-gpu-ok: a check of this script only)"
fi

LOGDIR=${OUT:-$ROOT/benchmarks/out}
mkdir -p "$LOGDIR" || exit 2
LOG=$LOGDIR/gpu_check.log
SUMMARY_JSON=$LOGDIR/gpu_check.json
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX") || exit 2
trap 'rm -rf "$SCRATCH"' EXIT
: > "$LOG"
: > "$SCRATCH/steps.tsv"
export PY ROOT LOGDIR SCRATCH GPU_CAP
START=$(date +%s)
DEADLINE=$((START + BUDGET_S))
MIN_STEP_S=${GPU_CHECK_MIN_STEP_S:-20}  # a step is not started with less time than this left

# ---------------------------------------------------------------- helpers (run in the steps)
note() {  # a short result line for the summary table (several calls are joined by '; ')
  printf '%s\n' "$*" >> "$STEP_NOTE"
}

find_sanitizer() {  # prints the path of compute-sanitizer, or fails
  local c nvcc_dir
  nvcc_dir=$(dirname "$(command -v nvcc 2>/dev/null || echo /nonexistent/nvcc)")
  for c in "$(command -v compute-sanitizer 2>/dev/null)" "${CUDA_HOME:-/nonexistent}/bin/compute-sanitizer" \
           "${CUDA_HOME:-/nonexistent}/compute-sanitizer/compute-sanitizer" "$nvcc_dir/compute-sanitizer" \
           /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer \
           /usr/local/cuda-*/bin/compute-sanitizer /opt/nvidia/compute-sanitizer/compute-sanitizer \
           /opt/nvidia/*/compute-sanitizer/compute-sanitizer; do
    if [ -n "$c" ] && [ -x "$c" ]; then echo "$c"; return 0; fi
  done
  # the pip wheel nvidia-cuda-sanitizer-api (nvidia/cu13/bin/, or its older layout)
  "$PY" -c "
import glob, os, sys
for base in sys.path:
    for pat in ('nvidia/*/bin/compute-sanitizer', 'nvidia/cuda_sanitizer_api/compute-sanitizer/compute-sanitizer'):
        for path in glob.glob(os.path.join(base, pat)):
            if os.access(path, os.X_OK):
                print(path); sys.exit(0)
sys.exit(1)"
}

have_module() { "$PY" -c "import $1" >/dev/null 2>&1; }

# ---------------------------------------------------------------- the steps
# Each prints its full output (to its log), calls `note` for the summary, and exits
# 0 (PASS), 77 (SKIP, with a note saying why) or anything else (FAIL).

step_env() {
  echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')   host: $(uname -srm)   cpus: $(nproc)"
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu,power.draw \
      --format=csv 2>&1
  else
    echo "nvidia-smi: not found"
  fi
  if command -v nvcc >/dev/null 2>&1; then nvcc --version | tail -n 2; else echo "nvcc: not on PATH"; fi
  if command -v ninja >/dev/null 2>&1; then echo "ninja $(ninja --version)"; else echo "ninja: not found"; fi
  local cs
  if cs=$(find_sanitizer); then echo "compute-sanitizer: $cs ($("$cs" --version 2>&1 | grep -i version | head -n 1))"
  else echo "compute-sanitizer: not found"; fi
  "$PY" - <<'EOF'
import importlib.util, platform, sys
import torch
print(f"python {platform.python_version()} ({sys.executable}); torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"cuDNN {torch.backends.cudnn.version()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU 0: {p.name}, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.1f} GiB, "
          f"L2 {getattr(p, 'L2_cache_size', 0) / 2**20:.0f} MiB")
mods = ["numpy", "pytest", "tqdm", "matplotlib", "safetensors", "triton", "setuptools", "ninja"]
have = {m: importlib.util.find_spec(m) is not None for m in mods}
print("python packages: " + ", ".join(f"{m} {'yes' if v else 'NO'}" for m, v in have.items()))
missing = [m for m, v in have.items() if not v]
with open(__import__("os").environ["STEP_NOTE"], "a") as f:
    f.write(f"torch {torch.__version__}, CUDA {torch.version.cuda}"
            + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU")
            + (f"; missing: {', '.join(missing)}" if missing else "") + "\n")
EOF
}

step_build() {
  if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then export PATH=$PATH:/usr/local/cuda/bin; fi
  if [ -n "$GPU_CAP" ]; then export TORCH_CUDA_ARCH_LIST=${GPU_CHECK_ARCH:-$GPU_CAP}
  else export TORCH_CUDA_ARCH_LIST=${GPU_CHECK_ARCH:-8.0;9.0}; fi
  export IRNET_CUDA=1 MAX_JOBS=${MAX_JOBS:-$(nproc)}
  command -v ninja >/dev/null 2>&1 || note "ninja not found: torch builds serially (slow)"
  echo "building with TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS against torch $("$PY" -c 'import torch; print(torch.__version__)')"
  rm -f irnet/_C.*.so  # a stale build must not stand in for a failed one
  local t0=$SECONDS rc std
  "$PY" setup.py build_ext --inplace 2>&1 | tee "$SCRATCH/build.out"
  rc=${PIPESTATUS[0]}
  std=$(grep -o -- '-std=c++[0-9a-z]*' "$SCRATCH/build.out" | sort -u | paste -sd ',' -)
  if [ "$rc" -ne 0 ]; then note "setup.py build_ext failed (exit $rc; ${std:-no -std flag seen}; see the log)"; return 1; fi
  note "built in $((SECONDS - t0)) s for sm ${TORCH_CUDA_ARCH_LIST} (${std:-no -std flag seen})"
  "$PY" - <<'EOF'
import os, sys
import irnet
from irnet import ops
from irnet.ops import registry
sys.path.append(os.path.join(os.getcwd(), "benchmarks"))
from gpu_sanitize_cases import REQUIRED_CUDA_OPS
note = open(os.environ["STEP_NOTE"], "a")
if not irnet._ext.LOADED:
    note.write(f"irnet._C does not load: {irnet._ext.ERROR}\n"); sys.exit(1)
so = os.path.realpath(irnet._C.__file__)
if not so.startswith(os.path.realpath(os.getcwd()) + os.sep):
    note.write(f"irnet._C comes from {so}, not from this tree\n"); sys.exit(1)
cuda = {op: ops.has_compiled_kernel(op, "cuda") for op in registry.SCHEMAS}
print("CUDA kernels:", cuda)
missing = [op for op in REQUIRED_CUDA_OPS if not cuda[op]]
algos = ops.cuda_conv_algorithms()
print("CUDA conv algorithms:", algos)
note.write(f"{sum(cuda.values())}/{len(cuda)} ops have CUDA kernels"
           + ("" if cuda.get("xnor_conv2d_fused") else " (xnor_conv2d_fused: none)")
           + f"; conv algorithms {algos}\n")
if missing:
    note.write(f"NO CUDA kernel for {missing}\n"); sys.exit(1)
EOF
}

step_tests() {
  local files=(tests/test_cuda_ops.py) f
  for f in tests/test_cuda_*.py; do
    [ -e "$f" ] && [ "$f" != tests/test_cuda_ops.py ] && files+=("$f")
  done
  if ! have_module pytest; then
    note "pytest is not installed: ran benchmarks/gpu_sanitize_cases.py as a smoke test instead"
    if "$PY" benchmarks/gpu_sanitize_cases.py; then
      note "smoke test passed; ${files[*]} NOT run"
      return 77
    fi
    note "smoke test FAILED"
    return 1
  fi
  echo "pytest ${files[*]}"
  IRNET_REQUIRE_EXTENSION=1 "$PY" -m pytest -q -rs -p no:cacheprovider --junitxml="$SCRATCH/junit.xml" "${files[@]}"
  local rc=$?
  "$PY" - "$SCRATCH/junit.xml" "$rc" <<'EOF'
import os, sys
import xml.etree.ElementTree as ET
path, rc = sys.argv[1], int(sys.argv[2])
note = open(os.environ["STEP_NOTE"], "a")
if not os.path.exists(path):
    note.write(f"pytest exited {rc} without a report\n"); sys.exit(1)
root = ET.parse(path).getroot()
suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
count = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
passed = count["tests"] - count["failures"] - count["errors"] - count["skipped"]
note.write(f"{passed} passed, {count['failures']} failed, {count['errors']} errors, {count['skipped']} skipped\n")
if rc == 0 and passed == 0:
    note.write("no test ran: every one was skipped (no CUDA kernels?)\n"); sys.exit(1)
sys.exit(1 if rc != 0 else 0)
EOF
}

run_sanitizer() {  # $1 = memcheck | racecheck
  local tool=$1 cs rc out=$SCRATCH/$1.out
  if ! cs=$(find_sanitizer); then
    note "compute-sanitizer not found (PATH, \$CUDA_HOME, /usr/local/cuda*, /opt/nvidia, pip nvidia-cuda-sanitizer-api)"
    return 77
  fi
  local extra=()
  if [ "$tool" = memcheck ]; then
    # no caching allocator: every tensor is its own allocation, so an access past its end is caught
    export PYTORCH_NO_CUDA_MEMORY_CACHING=1
  else
    extra=(--racecheck-report all)
  fi
  echo "$cs --tool $tool ${extra[*]} $PY benchmarks/gpu_sanitize_cases.py"
  "$cs" --tool "$tool" "${extra[@]}" --error-exitcode 86 --print-limit 30 --target-processes application-only \
    "$PY" benchmarks/gpu_sanitize_cases.py 2>&1 | tee "$out"
  rc=${PIPESTATUS[0]}
  local cases summary
  cases=$(grep -o 'gpu_sanitize_cases: [0-9]* cases run on [a-z]*, [0-9]* failed' "$out" | tail -n 1)
  if [ "$tool" = memcheck ]; then
    summary=$(grep -o 'ERROR SUMMARY: [0-9]* error[s]*' "$out" | tail -n 1)
  else
    summary=$(grep -o 'RACECHECK SUMMARY: [0-9]* hazard[s]* displayed ([0-9]* error[s]*, [0-9]* warning[s]*)' "$out" | tail -n 1)
  fi
  note "${summary:-no $tool summary line found}; ${cases:-the case driver did not finish}"
  [ "$rc" -eq 0 ] || { note "exit status $rc"; return 1; }
  [ -n "$cases" ] && [[ "$cases" == *", 0 failed" ]] || return 1
  case "$summary" in
    *"SUMMARY: 0 error"*|*"SUMMARY: 0 hazard"*) return 0 ;;
    "") note "judged by the exit status alone"; return 0 ;;
    *) return 1 ;;
  esac
}
step_memcheck() { run_sanitizer memcheck; }
step_racecheck() { run_sanitizer racecheck; }

run_train() {  # $1 = tag, then extra flags
  local tag=$1 rc out=$SCRATCH/train_$1.out
  shift
  local extra=("$@")
  # GPU_CHECK_TRAIN_ARGS: more flags for both runs (e.g. "--train-limit 2048"; later flags win)
  local more=()
  read -r -a more <<< "${GPU_CHECK_TRAIN_ARGS:-}"
  extra+=("${more[@]}")
  have_module tqdm || note "tqdm is not installed (irnet.train may need it)"
  have_module matplotlib || { extra+=(--no-plots); note "no matplotlib: --no-plots"; }
  echo "$PY -m irnet.train --preset demo --device cuda --epochs 1 --no-progress ${extra[*]}"
  "$PY" -m irnet.train --preset demo --device cuda --epochs 1 --no-progress --out "$SCRATCH/run_$tag" "${extra[@]}" \
    2>&1 | tee "$out"
  rc=${PIPESTATUS[0]}
  local epoch packed ops speed
  epoch=$(grep -o 'epoch 1/1: .*' "$out" | tail -n 1 | sed 's/train loss [^|]*| //')
  packed=$(grep -o 'packed model (irnet.deploy.convert): [0-9]*/[0-9]* test predictions identical to the trained model -> [A-Za-z ]*' "$out" | tail -n 1)
  ops=$(grep -o '^ops: [a-z]*' "$out" | tail -n 1)
  speed=$(grep -o 'packed fused [0-9.]* s vs [0-9.]* s for the same network as a plain float model ([0-9.]*x' "$out" | tail -n 1)
  note "${epoch:-no epoch finished}"
  [ -n "$speed" ] && note "$speed)"
  note "${packed:+packed ${packed#*: }}${packed:-no packed-model check printed}; ${ops:-no ops line}"
  [ "$rc" -eq 0 ] || { note "exit status $rc"; return 1; }
  [[ "$packed" == *"-> the same" ]] || return 1
  grep -q '^ops: fused (' "$out" || { note "the training ops did not all run compiled CUDA kernels"; return 1; }
}
step_train() { run_train fp32; }
step_train_amp() { run_train amp --amp; }

step_bench() {
  local out=$SCRATCH/bench.out rc budget=$((STEP_TIMEOUT - 25))
  [ "$budget" -ge 30 ] || budget=30
  # GPU_CHECK_BENCH_ARGS: more flags for the benchmark (e.g. "--no-compile"; later flags win)
  local more=()
  read -r -a more <<< "${GPU_CHECK_BENCH_ARGS:-}"
  "$PY" benchmarks/bench_cuda_conv.py --json "$LOGDIR/bench_cuda_conv.json" --png "$LOGDIR/bench_cuda_conv.png" \
    --budget-s "$budget" "${more[@]}" 2>&1 | tee "$out"
  rc=${PIPESTATUS[0]}
  local line
  while IFS= read -r line; do note "$line"; done < <(grep -E '^TARGET ' "$out" | sed -E 's/^TARGET //' | cut -c1-150)
  grep -E '^bench_cuda_conv: (OK|PROBLEMS)' "$out" | tail -n 1 | while IFS= read -r line; do note "$line"; done
  [ -s "$STEP_NOTE" ] || note "$(tail -n 1 "$out" | cut -c1-200)"
  return "$rc"
}

export -f note find_sanitizer have_module step_env step_build step_tests run_sanitizer step_memcheck step_racecheck \
  run_train step_train step_train_amp step_bench

# ---------------------------------------------------------------- the runner
selected() {
  local s=$1
  if [ -n "$ONLY" ]; then case ",$ONLY," in *",$s,"*) ;; *) return 1 ;; esac; fi
  case ",$SKIP," in *",$s,"*) return 1 ;; esac
  return 0
}

record() {  # name status seconds timeout note
  local clean
  clean=$(printf '%s' "$5" | tr '\t\n' '  ' | cut -c1-700)
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$clean" >> "$SCRATCH/steps.tsv"
}

run_step() {  # name cap_seconds (GPU_CHECK_CAP_<NAME>=S overrides the cap, e.g. for a slow build)
  local name=$1 cap=$2 override
  override="GPU_CHECK_CAP_$(printf '%s' "$name" | tr '[:lower:]' '[:upper:]')"
  cap=${!override:-$cap}
  if ! selected "$name"; then record "$name" "-" 0 0 "not selected (--only/--skip)"; return; fi
  local left=$((DEADLINE - $(date +%s)))
  if [ "$left" -lt "$MIN_STEP_S" ]; then
    record "$name" SKIP 0 0 "out of time: ${left} s of the ${BUDGET_S} s budget left"
    echo "[gpu_check] $name: SKIP (out of time)"
    return
  fi
  local limit=$((cap < left ? cap : left))
  local slog=$SCRATCH/$name.log notef=$SCRATCH/$name.note
  : > "$notef"
  echo "[gpu_check] $name: running (timeout ${limit} s) ..."
  local t0 rc
  t0=$(date +%s)
  STEP_NOTE=$notef STEP_TIMEOUT=$limit timeout --kill-after=10 "$limit" bash -c "step_$name" > "$slog" 2>&1
  rc=$?
  local dt=$(($(date +%s) - t0)) status
  local notes
  notes=$(awk 'NR > 1 { printf "; " } { printf "%s", $0 }' "$notef")
  case $rc in
    0) status=PASS ;;
    77) status=SKIP ;;
    124|137) status=FAIL; notes="TIMED OUT after ${limit} s${notes:+; $notes}" ;;
    *) status=FAIL ;;
  esac
  {
    echo "================================================================ step $name: $status (${dt} s, exit $rc)"
    [ -n "$notes" ] && echo "note: $notes"
    cat "$slog"
  } >> "$LOG"
  record "$name" "$status" "$dt" "$limit" "$notes"
  echo "[gpu_check] $name: $status (${dt} s)${notes:+  $notes}"
  if [ "$status" = FAIL ]; then
    echo "---- last lines of $name's output (all of it in $LOG):"
    tail -n 25 "$slog" | sed 's/^/    /'
    echo "----"
  fi
  if [ "$name" = bench ] && [ -s "$slog" ]; then
    echo "---- benchmark tables (JSON and PNG in $LOGDIR):"
    grep -E '^(conv:|train_ops:|train_step:|layer |op  |[0-9]+@[0-9]+ b|libra_pb |sign_ede |fused |reference |compiled |fused vs|TARGET|bench_cuda_conv:|skipped:)' "$slog" \
      | cut -c1-170 | tail -n 45 | sed 's/^/    /'
    echo "----"
  fi
}

echo "[gpu_check] $GPU_NAME (sm $GPU_CAP), torch $TORCH_VERSION, $PY; budget ${BUDGET_S} s; logs in $LOGDIR"
run_step env 30
run_step build 240
run_step tests 150
run_step memcheck 120
run_step racecheck 120
run_step train 90
run_step train_amp 90
run_step bench 240

TOTAL=$(($(date +%s) - START))
"$PY" - "$SCRATCH/steps.tsv" "$SUMMARY_JSON" "$GPU_NAME" "$GPU_CAP" "$TORCH_VERSION" "$TOTAL" "$BUDGET_S" <<'EOF' || true
import json, sys, time
tsv, out, gpu, cap, torch_version, total, budget = sys.argv[1:8]
steps = []
for line in open(tsv):
    name, status, secs, limit, note = line.rstrip("\n").split("\t")
    steps.append(dict(step=name, status=status, seconds=int(secs), timeout_s=int(limit), note=note))
json.dump(dict(gpu=gpu, capability=cap, torch=torch_version, total_s=int(total), budget_s=int(budget),
               timestamp_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), steps=steps),
          open(out, "w"), indent=1)
EOF

# ---------------------------------------------------------------- the summary table, last
n_pass=0; n_fail=0; n_skip=0
echo
echo "==================== gpu_check summary: $GPU_NAME (sm $GPU_CAP), torch $TORCH_VERSION ===================="
printf '%-10s %-6s %6s  %s\n' step status time note
while IFS=$'\t' read -r name status secs limit notes; do
  case $status in PASS) n_pass=$((n_pass + 1)) ;; FAIL) n_fail=$((n_fail + 1)) ;; SKIP) n_skip=$((n_skip + 1)) ;; esac
  printf '%-10s %-6s %5ss  %s\n' "$name" "$status" "$secs" "$(printf '%s' "$notes" | cut -c1-450)"
done < "$SCRATCH/steps.tsv"
echo "total ${TOTAL} s (budget ${BUDGET_S} s); full logs: $LOG; summary: $SUMMARY_JSON"
if [ "$n_fail" -gt 0 ]; then rc=1; elif [ "$n_skip" -gt 0 ]; then rc=3; else rc=0; fi
echo "gpu_check: $n_pass passed, $n_fail failed, $n_skip skipped -> exit $rc"
exit $rc
