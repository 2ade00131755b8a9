#!/usr/bin/env bash
# Pilot of the GPU tier of the video claims (`make claims-gpu`): every *_gpu claim at its full model size, resolution,
# frame count and number of samples, but with 1/8 of its training steps, not published, one after another under a
# time box each - to measure what each stage costs on the GPU before sizing the tier (the first try of
# video_ldm/sprites_claim_gpu ran out of a 470 s limit in its image stage; docs/PERFORMANCE.md).
#   tests/bench/gpu_tier_pilot.sh OUT_DIR [PYTHON]
# Writes OUT_DIR/<claim>.log (every output line prefixed with the seconds since the claim started: the stages'
# model summaries mark where each stage begins) and OUT_DIR/<claim>.json (the run's results.json: per-stage
# train_time_s_* and sample_time_s_* where the claim records them) for the claims that finish.
# PILOT_CPU=1: a dry run on CPU (quick=true: tiny sizes; checks the commands and overrides only).
# PILOT_ONLY="video_ldm vdm_joint": only those pilots; PILOT_EXTRA_<name>="k=v ...": extra overrides for one pilot.
# The claims' seed workers are child processes that outlive a TERM (Lightning's handler catches it), so the time box
# kills the whole process group (timeout -k) and the log is written by the pipe's reader until every writer is gone.
set -u
out=${1:-outputs/bench/gpu_tier_pilot}
py=${2:-python3}
mkdir -p "$out"
extra=()
[[ -n "${PILOT_CPU:-}" ]] && extra=(quick=true)
pilot() {  # pilot NAME SECONDS EXPERIMENT OVERRIDES...
    local name=$1 limit=$2 exp=$3
    shift 3
    if [[ -n "${PILOT_ONLY:-}" && " $PILOT_ONLY " != *" $name "* ]]; then
        return
    fi
    local start more=()
    local var="PILOT_EXTRA_$name"
    read -r -a more <<< "${!var:-}"
    start=$(date +%s)
    echo "== $name (limit ${limit}s): experiment=$exp $* ${more[*]}" | tee -a "$out/summary.txt"
    PYTHONUNBUFFERED=1 timeout -k 5 "$limit" "$py" -m shared.engine.train "experiment=$exp" "$@" "${more[@]}" \
        logger=none "run_dir=/tmp/gpu_tier_pilot/$name" "${extra[@]}" 2>&1 |
        while IFS= read -r line; do printf '%4d %s\n' $(($(date +%s) - start)) "$line"; done > "$out/$name.log"
    echo "== $name: exit ${PIPESTATUS[0]} after $(($(date +%s) - start))s" | tee -a "$out/summary.txt"
    cp "/tmp/gpu_tier_pilot/$name/results.json" "$out/$name.json" 2>/dev/null
}
# First, what one training step costs and where: the Video LDM autoencoder stage stepped by the harness (fit) and by a
# bare loop, with the top operators of five bare steps (tests/bench/step_overhead.py); PILOT_ONLY=overhead for this only.
if [[ -z "${PILOT_ONLY:-}" || " $PILOT_ONLY " == *" overhead "* ]]; then
    dev=cuda
    [[ -n "${PILOT_CPU:-}" ]] && dev=cpu
    small=()
    [[ -n "${PILOT_CPU:-}" ]] && small=(--override data.size=16 --override data.frames=2 --override data.train.n=16
                                       --override claim.autoencoder_batch_size=1 --override "data.train.radius=[2.6,3.2]")
    timeout -k 5 "${T_OVERHEAD:-120}" "$py" tests/bench/step_overhead.py --experiment video_ldm/sprites_claim_gpu \
        --stage autoencoder --steps 60 --warmup 10 --device "$dev" --profile "${small[@]}" > "$out/overhead.log" 2>&1
    echo "== overhead: exit $? $(tail -1 "$out/overhead.log")" | tee -a "$out/summary.txt"
fi
pilot video_ldm "${T_VIDEO_LDM:-130}" video_ldm/sprites_claim_gpu claim.autoencoder_steps=600 claim.image_steps=600 \
    trainer.max_steps=600 claim.style_steps=150 claim.decoder_steps=100
pilot animatediff "${T_ANIMATEDIFF:-110}" animatediff/sprites_claim_gpu claim.stages.image.trainer.max_steps=300 \
    claim.stages.motion.trainer.max_steps=400 claim.stages.personalize_full.trainer.max_steps=50 \
    claim.stages.personalize_lora.trainer.max_steps=50 claim.stages.motion_lora.trainer.max_steps=75
pilot vdm_joint "${T_VDM_JOINT:-80}" vdm/sprites_joint_claim_gpu trainer.max_steps=200
pilot vdm_extension "${T_VDM_EXT:-80}" vdm/sprites_extension_claim_gpu trainer.max_steps=250
pilot pvdm "${T_PVDM:-80}" pvdm/sprites_claim_gpu trainer.max_steps=150 claim.ae_steps=250
