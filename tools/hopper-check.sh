#!/usr/bin/env bash
# The checks the Hopper paths (the default ones since 2026-12-07) pass, in one command on an H100/H200; rerun them
# after changing either: the wgmma grouped GEMMs and cuDNN attention against nmoe's mma.sync and flash kernels, the
# GPU parity suite on each GEMM path, and moonlet6's throughput on nmoe's own kernels and on the defaults beside
# PyTorch + torch.compile. Logs go to $1 (default runs/hopper-check).
#   bash tools/hopper-check.sh [OUT_DIR]
set -u
out=${1:-runs/hopper-check}
mkdir -p "$out"
out=$(cd "$out" && pwd) # absolute: the PyTorch run works from tools/
venv_cudnn=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cudnn/lib/libcudnn.so.9
section() { echo "=== $1 (${SECONDS}s)"; }
node bin/nmoe.js config show configs/bench/moonlet6.toml --json > "$out/m6.json"
section gemm-check; node --import tsx tools/gemm-check.ts --timeout 60 > "$out/gemm.log" 2>&1; echo "exit $?"; tail -30 "$out/gemm.log"
section cudnn-check; node --import tsx tools/cudnn-check.ts --out "$out/cudnn" > "$out/cudnn.log" 2>&1; echo "exit $?"; tail -14 "$out/cudnn.log"
if [ -f "$venv_cudnn" ]; then
  section "cudnn-check ($venv_cudnn)"; NMOE_CUDNN_PATH=$venv_cudnn node --import tsx tools/cudnn-check.ts --out "$out/cudnn-venv" > "$out/cudnn-venv.log" 2>&1; echo "exit $?"; tail -14 "$out/cudnn-venv.log"
fi
for gemm in mma wgmma; do
  section "parity ($gemm)"; NMOE_GROUPED_GEMM=$gemm node node_modules/vitest/vitest.mjs run test/cuda-parity.test.ts > "$out/parity-$gemm.log" 2>&1; echo "exit $?"; grep -E "×|Tests " "$out/parity-$gemm.log"
done
section bench
NMOE_GROUPED_GEMM=mma node bin/nmoe.js bench train configs/bench/moonlet6.toml --steps 10 --attn_kernel=nmoe 2>&1 | tail -1
node bin/nmoe.js bench train configs/bench/moonlet6.toml --steps 10 2>&1 | tail -1
(cd tools && python3 torch_bench.py --config "$out/m6.json" --steps 10 --compile 2>&1 | tail -1)
section profile; node bin/nmoe.js bench train configs/bench/moonlet6.toml --steps 5 --profile 2>&1 | tail -40
