#!/usr/bin/env bash
# Every check that needs a GPU, as one prepared run (for a session that is lent a GPU machine):
#
#     bash benchmarks/gpu_checks.sh            # logs and tables under $OUT (default ./gpu_checks_out)
#
# 1. builds _core with the CUDA kernels for this card only (its compute capability, read by torch);
# 2. runs every CUDA test (CUDA twin vs CPU at realistic sizes: alignment, LM, Adam step, world
#    points, moments, ego-flow, tracking; the checked CUDA boundary; the device guard);
# 3. benchmarks/align_bench.py --device cuda (PyTorch reference, Adam, LM; flow term off and on);
# 4. monst3r-rt bench --random --device cuda: encoder, decoder, pair and stream rows in fp32, fp16
#    and bf16 at 512x288 (the stream row's frames/s is the real-time target's number);
# 5. the whole test suite on that machine (CPU tests included), if time is left.
# TensorRT is not on the lent machine's image and cannot be fetched there (no network; NVIDIA's
# index only), so `monst3r-rt verify-engine` and the TensorRT bench rows cannot run there.
#
# $OUT gets summary.txt (machine, each step's exit status and time) and one log per step (at most
# 8 files: what the device tool brings back). Each step has its own time limit, so that the run
# ends within about 8 minutes (a session has 15 minutes of device time in all: one rerun); a step
# that fails is reported and the next one still runs. Needs python3 with torch (CUDA), numpy,
# scipy, opencv-python-headless, pybind11, cmake, ninja and nvcc: all on the lent machine's image.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_checks_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/python${PYTHONPATH:+:$PYTHONPATH}
SUMMARY=$OUT/summary.txt
: >"$SUMMARY"
T0=$(date +%s)

step() {  # step NAME LIMIT_S COMMAND...: run with a time limit, log to $OUT/NAME.txt, record rc
  local name=$1 limit=$2
  shift 2
  local t=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.txt" 2>&1
  local rc=$?
  printf '%-12s rc=%-3s %4ss (limit %ss)\n' "$name" "$rc" "$(($(date +%s) - t))" "$limit" |
    tee -a "$SUMMARY"
  return $rc
}

{
  echo "date: $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>&1
  "$PY" - <<'EOF'
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
print("gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
EOF
  echo "cpu: $(nproc) cores"
} >>"$SUMMARY" 2>&1
cat "$SUMMARY"

# GPU_CHECKS_ARCH=90 without a GPU: a dry run of the script (build, tests skip, benchmarks fail)
ARCH=${GPU_CHECKS_ARCH:-$("$PY" -c "import torch; c = torch.cuda.get_device_capability(0)
print(f'{c[0]}{c[1]}')" 2>/dev/null)}
if [ -z "$ARCH" ]; then
  echo "no GPU visible to torch: nothing to check here" | tee -a "$SUMMARY"
  exit 2
fi
VERSION=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' python/monst3r_rt/_version.py)
step build 240 bash -c "
  cmake -S . -B build/gpu-checks -G Ninja -DCMAKE_BUILD_TYPE=Release -DMONST3R_RT_CUDA=ON \
    -DMONST3R_RT_CUDA_ARCHITECTURES=$ARCH -DSKBUILD_PROJECT_VERSION=$VERSION \
    -Dpybind11_DIR=\$($PY -c 'import pybind11; print(pybind11.get_cmake_dir())') \
    -DPython_EXECUTABLE=\$(command -v $PY) &&
  cmake --build build/gpu-checks -j$(nproc) &&
  cp build/gpu-checks/_core*.so python/monst3r_rt/" || { cat "$SUMMARY"; exit 1; }
"$PY" -c "from monst3r_rt import _core; print(_core.build_info(), _core.cuda_status())" \
  >>"$SUMMARY" 2>&1

CUDA_TESTS="tests/test_align_kernels.py tests/test_align_lm.py tests/test_perpixel.py
  tests/test_geometry.py tests/test_core.py tests/test_cuda_boundary.py tests/test_motion.py
  tests/test_tracking.py tests/test_checks.py"
# shellcheck disable=SC2086
step cuda-tests 150 "$PY" -m pytest -q -rs -p no:cacheprovider -k "cuda or gpu or device" $CUDA_TESTS
step align 180 "$PY" benchmarks/align_bench.py --device cuda --solvers reference,adam,lm \
  --flow off,on
step bench 150 "$PY" -m monst3r_rt.cli bench --random --device cuda --backend torch \
  --precision fp32,fp16,bf16 --stage encoder,decoder,pair,stream --size 512x288 --frames 60 \
  --json "$OUT/bench.json" -q
LEFT=$((450 - ($(date +%s) - T0)))
if [ "$LEFT" -gt 60 ]; then
  step all-tests "$LEFT" "$PY" -m pytest -q -rs -p no:cacheprovider tests
else
  echo "all-tests skipped: ${LEFT}s left" | tee -a "$SUMMARY"
fi
echo "total $(($(date +%s) - T0))s" | tee -a "$SUMMARY"
