#!/usr/bin/env bash
# Where a GPU-tier training step's time goes (issue 23: the first pilot read ~0.13 s per step of a 167 K-parameter
# autoencoder on an H200). One time-boxed run of tests/bench/step_overhead.py per hypothesis, each writing
# OUT/<name>.log whose last line is the JSON, then the Video LDM pilot with its step progress bar on:
#   ae_fit     Video LDM GPU-tier autoencoder stage: harness (fit) vs bare loop under bf16 autocast, profiled
#              (top operators by host and by device time), and the loader alone
#   ae_fp32    the bare loop without autocast              ae_bench   the bare loop with cudnn.benchmark
#   ae_b4      the bare loop at 1/4 the batch              ae_b64     at 4x (flat in the batch = overhead, not compute)
#   ae_t1      one intra-op thread, as the claims' seed jobs (fit, bare, loader alone)
#   ae_t1_nw4  one thread, the world rendered by 4 loader worker processes
#   vdm_main   VDM joint GPU tier's U-Net stage, bare, profiled        vdm_t1   the same, one thread, not profiled
#   pilot      video_ldm/sprites_claim_gpu, one seed, 600 autoencoder + 600 image steps, progress bar on (the log's
#              per-line seconds since start and the bar's steps/s separate training from what runs between stages)
#   tests/bench/gpu_step_diag.sh OUT_DIR [PYTHON]     DIAG_ONLY="ae_t1 pilot": some runs only
#   DIAG_CPU=1: dry run on CPU at tiny sizes (checks the commands only)
# Measured on 2026-12-04 (docs/PERFORMANCE.md): round 1 = ae_fit ae_fp32 ae_bench ae_b4 ae_b64 vdm_main; round 2 =
# ae_t1 ae_t1_nw4 vdm_t1 and the pilot with data.num_workers=4; round 3 = the pilot with the progress bar.
set -u
out=${1:-outputs/bench/gpu_step_diag}
py=${2:-python3}
mkdir -p "$out"
dev=cuda small=() steps=60 warm=10 b=16
if [[ -n "${DIAG_CPU:-}" ]]; then
    dev=cpu steps=8 warm=2 b=1
    small=(--override data.size=16 --override data.frames=2 --override data.train.n=16
           --override "data.train.radius=[2.6,3.2]")
fi
want() { [[ -z "${DIAG_ONLY:-}" || " $DIAG_ONLY " == *" $1 "* ]]; }
one() {  # one NAME SECONDS ARGS...
    local name=$1 limit=$2
    shift 2
    want "$name" || return 0
    timeout -k 5 "$limit" "$py" tests/bench/step_overhead.py --device "$dev" --steps "$steps" --warmup "$warm" \
        "${small[@]}" "$@" > "$out/$name.log" 2>&1
    echo "== $name: exit $? $(tail -1 "$out/$name.log")" | tee -a "$out/summary.txt"
}
ae=(--experiment video_ldm/sprites_claim_gpu --stage autoencoder)
one ae_fit 100 "${ae[@]}" --override claim.autoencoder_batch_size=$b --profile --data-batches 20
one ae_fp32 60 "${ae[@]}" --override claim.autoencoder_batch_size=$b --bare-only --amp none
one ae_bench 60 "${ae[@]}" --override claim.autoencoder_batch_size=$b --bare-only --cudnn-benchmark
one ae_b4 60 "${ae[@]}" --override claim.autoencoder_batch_size=$((b < 4 ? 1 : b / 4)) --bare-only
one ae_b64 60 "${ae[@]}" --override claim.autoencoder_batch_size=$((b * 4)) --bare-only
one ae_t1 100 "${ae[@]}" --override claim.autoencoder_batch_size=$b --threads 1 --data-batches 20
one ae_t1_nw4 100 "${ae[@]}" --override claim.autoencoder_batch_size=$b --threads 1 --override data.num_workers=4
vdm=(--experiment vdm/sprites_joint_claim_gpu --stage main)
[[ -n "${DIAG_CPU:-}" ]] && vdm+=(--override model.image_size=16 --override model.base_channels=16
                                  --override "model.channel_mult=[1,2]" --override "model.attention_resolutions=[8]"
                                  --override data.batch_size=1 --override "module.sample_shape=[3,2,16,16]")
one vdm_main 100 "${vdm[@]}" --bare-only --profile
one vdm_t1 80 "${vdm[@]}" --bare-only --threads 1
if want pilot; then
    [[ -n "${DIAG_CPU:-}" ]] && export PILOT_CPU=1
    PILOT_ONLY=video_ldm T_VIDEO_LDM=${T_PILOT:-140} \
        PILOT_EXTRA_video_ldm="claim.seeds=[0] claim.workers=1 trainer.enable_progress_bar=true" \
        tests/bench/gpu_tier_pilot.sh "$out/pilot" "$py"
fi
