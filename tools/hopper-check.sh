#!/usr/bin/env bash
# Every check of nmoe's GPU code, in one command on an H100/H200, most important first, each section under its own
# time limit so a session's first device call gets as far as it can: the GPU parity suite (every CUDA op against the
# CPU oracle, on the default Hopper path), moonlet6's throughput beside PyTorch + torch.compile, the opt-in
# ping-pong weight gradient beside the default one, PyTorch parity of the whole model in fp32 and bf16, the kernel
# benchmarks (SWA beside causal attention), the fp8 quantisers and GEMMs against the CPU emulation, then the slower
# sweeps: the parity suite on the mma.sync path, cuDNN against nmoe's flash kernels, every grouped GEMM case, and the
# per-op profile. Logs go to OUT_DIR (default runs/hopper-check); SECTIONS picks and orders sections (default: all,
# in the order below).
#   bash tools/hopper-check.sh [OUT_DIR]
#   SECTIONS="parity bench" bash tools/hopper-check.sh /tmp/out
set -u
out=${1:-runs/hopper-check}
mkdir -p "$out"
out=$(cd "$out" && pwd) # absolute: the PyTorch runs work from tools/
venv_cudnn=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cudnn/lib/libcudnn.so.9
vitest() { node node_modules/vitest/vitest.mjs run "$@"; }
# run NAME LIMIT_S COMMAND...: the command's output in OUT_DIR/NAME.log, its exit status and last lines here.
run() {
  local name=$1 limit=$2
  shift 2
  echo "=== $name (at ${SECONDS}s, limit ${limit}s)"
  timeout --kill-after=10 "$limit" "$@" > "$out/$name.log" 2>&1
  echo "exit $?"
  grep -E "×|✗|FAIL|Tests |tokens/s|TFLOPS|summary|worst|error" "$out/$name.log" | tail -25
}
node bin/nmoe.js config show configs/bench/moonlet6.toml --json > "$out/m6.json"

section_parity() { run parity 300 vitest test/cuda-parity.test.ts; }
section_bench() {
  run bench-nmoe 150 node bin/nmoe.js bench train configs/bench/moonlet6.toml --steps 10
  run bench-torch 200 bash -c "cd tools && python3 torch_bench.py --config '$out/m6.json' --steps 10 --compile"
}
section_wgrad() { run wgrad 150 node --import tsx tools/gemm-check.ts --cases uniform,skewed --ops wgrad --no-variants --out "$out/wgrad"; }
section_torch_parity() {
  run torch-parity-fp32 150 node --import tsx tools/parity.ts --config configs/tiny.toml --device cuda --torch --out "$out/parity-fp32"
  run torch-parity-bf16 150 node --import tsx tools/parity.ts --config configs/tiny.toml --device cuda --dtype bf16 --torch --out "$out/parity-bf16"
}
section_kernels() { run kernels 200 node bin/nmoe.js bench kernels configs/bench/moonlet6.toml; }
section_fp8() { run fp8 200 node --import tsx tools/fp8-check.ts --cases small,moonlet6; }
section_parity_mma() { NMOE_GROUPED_GEMM=mma run parity-mma 300 vitest test/cuda-parity.test.ts; }
section_cudnn() {
  run cudnn 200 node --import tsx tools/cudnn-check.ts --out "$out/cudnn"
  if [ -f "$venv_cudnn" ]; then
    NMOE_CUDNN_PATH=$venv_cudnn run cudnn-venv 200 node --import tsx tools/cudnn-check.ts --out "$out/cudnn-venv"
  fi
}
section_gemm() { run gemm 400 node --import tsx tools/gemm-check.ts --timeout 60 --out "$out/gemm"; }
section_profile() { run profile 150 node bin/nmoe.js bench train configs/bench/moonlet6.toml --steps 5 --profile; }

for s in ${SECTIONS:-parity bench wgrad torch_parity kernels fp8 parity_mma cudnn gemm profile}; do
  if declare -F "section_$s" > /dev/null; then "section_$s"; else echo "=== $s: no such section"; fi
done
