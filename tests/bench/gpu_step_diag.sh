#!/usr/bin/env bash
# Where a GPU-tier training step's time goes (issue 23: ~0.13 s per step of a 167 K-parameter autoencoder on an H200,
# whatever the number of processes). One time-boxed run of tests/bench/step_overhead.py per hypothesis, each writing
# OUT/<name>.log whose last line is the JSON:
#   ae_fit       Video LDM GPU-tier autoencoder stage: harness (fit) vs bare loop under bf16 autocast, profiled
#                (top operators by host and by device time), and the loader alone
#   ae_fp32      the bare loop without autocast            ae_bench   the bare loop with cudnn.benchmark
#   ae_b4/ae_b64 the bare loop at 1/4 and 4x the batch (per-step time flat in the batch = overhead, not compute)
#   vdm_main     VDM joint GPU tier's U-Net stage, bare, profiled
#   tests/bench/gpu_step_diag.sh OUT_DIR [PYTHON]        DIAG_CPU=1: dry run on CPU at tiny sizes
set -u
out=${1:-outputs/bench/gpu_step_diag}
py=${2:-python3}
mkdir -p "$out"
dev=cuda small=() steps=60 warm=10
if [[ -n "${DIAG_CPU:-}" ]]; then
    dev=cpu steps=8 warm=2
    small=(--override data.size=16 --override data.frames=2 --override data.train.n=16
           --override "data.train.radius=[2.6,3.2]")
fi
one() {  # one NAME SECONDS ARGS...
    local name=$1 limit=$2
    shift 2
    timeout -k 5 "$limit" "$py" tests/bench/step_overhead.py --device "$dev" --steps "$steps" --warmup "$warm" \
        "${small[@]}" "$@" > "$out/$name.log" 2>&1
    echo "== $name: exit $? $(tail -1 "$out/$name.log")" | tee -a "$out/summary.txt"
}
ae=(--experiment video_ldm/sprites_claim_gpu --stage autoencoder)
b=16
[[ -n "${DIAG_CPU:-}" ]] && b=1
one ae_fit 100 "${ae[@]}" --override claim.autoencoder_batch_size=$b --profile --data-batches 20
one ae_fp32 60 "${ae[@]}" --override claim.autoencoder_batch_size=$b --bare-only --amp none
one ae_bench 60 "${ae[@]}" --override claim.autoencoder_batch_size=$b --bare-only --cudnn-benchmark
one ae_b4 60 "${ae[@]}" --override claim.autoencoder_batch_size=$((b < 4 ? 1 : b / 4)) --bare-only
one ae_b64 60 "${ae[@]}" --override claim.autoencoder_batch_size=$((b * 4)) --bare-only
vdm=(--experiment vdm/sprites_joint_claim_gpu --stage main)
[[ -n "${DIAG_CPU:-}" ]] && vdm+=(--override model.image_size=16 --override model.base_channels=16
                                  --override "model.channel_mult=[1,2]" --override "model.attention_resolutions=[8]"
                                  --override data.batch_size=1 --override claim.image_batch_size=2
                                  --override "module.sample_shape=[3,2,16,16]")
one vdm_main 100 "${vdm[@]}" --bare-only --profile
