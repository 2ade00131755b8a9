#!/usr/bin/env bash
# The GPU rows of `make bench` (issue #10) as one time-boxed run: `make bench-gpu` or
#   tests/bench/gpu_bench.sh OUT_DIR BUDGET_SECONDS [PYTHON]
# Phases, most important first, each cut off at the budget left so that what finished is kept:
#   1 eager bf16: all four families at --size "$size" (paper batch sizes) + our DiT-B/2's MFU at batch 256
#   2 torch.compile bf16: our DiT-B/2's MFU, then the ratio table for DiT, the 2D U-Net, the motion-module
#     U-Net and the video U-Net, one family per invocation
# Every phase writes its own JSON under OUT_DIR and appends its output to OUT_DIR/log.txt.
# PHASES="compile_unet2d compile_motion" runs only the phases named (eager compile_mfu compile_dit compile_unet2d
# compile_motion compile_unet3d): the compiled U-Net training graphs take minutes each to build, so a short lease
# may need to pick up where an earlier run stopped.
set -u
out=${1:-outputs/bench/gpu}
budget=${2:-540}
py=${3:-python3}
dev=${BENCH_DEVICE:-cuda}  # BENCH_DEVICE=cpu BENCH_SIZE=tiny: a dry run of this script without a GPU
size=${BENCH_SIZE:-gpu}
mkdir -p "$out"
start=$(date +%s)
left() { echo $((budget - ($(date +%s) - start))); }
phase() {  # phase NAME MAX_SECONDS ARGS... : run one bench invocation, cut off at min(MAX, budget left)
    local name=$1 max=$2
    shift 2
    if [[ -n "${PHASES:-}" && " $PHASES " != *" $name "* ]]; then
        return
    fi
    local t
    t=$(left)
    ((t > max)) && t=$max
    if ((t < 20)); then
        echo "== $name: skipped, ${t}s of the budget left" | tee -a "$out/log.txt"
        return
    fi
    echo "== $name (limit ${t}s): $py -m tools.bench $*" | tee -a "$out/log.txt"
    PYTHONUNBUFFERED=1 timeout "$t" "$py" -m tools.bench "$@" --out "$out/$name.json" 2>&1 |
        tee -a "$out/log.txt"
    echo "== $name: exit ${PIPESTATUS[0]} after $(($(date +%s) - start))s" | tee -a "$out/log.txt"
}

{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    "$py" -c "import torch, diffusers, timm; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'diffusers', diffusers.__version__, 'timm', timm.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"
} 2>&1 | tee -a "$out/log.txt"

all=(unet2d dit unet3d motion)
phase eager 150 --device "$dev" --precision bf16 --size "$size" --cases "${all[@]}" --repeats 10 --warmup 3 \
    --mfu --mfu-size "$size"
phase compile_mfu 120 --device "$dev" --precision bf16 --compile --cases --repeats 10 --warmup 2 --mfu --mfu-size "$size"
for c in dit unet2d motion unet3d; do
    phase "compile_$c" 200 --device "$dev" --precision bf16 --compile --size "$size" --cases "$c" --repeats 10 --warmup 2
done
echo "== done after $(($(date +%s) - start))s" | tee -a "$out/log.txt"
