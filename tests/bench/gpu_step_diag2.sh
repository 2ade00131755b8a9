#!/usr/bin/env bash
# Second round of gpu_step_diag.sh (issue 23): the first round measured the Video LDM GPU-tier autoencoder step at
# 0.031 s bare / 0.037 s through fit on an H200 with the process's default threads - not the pilot's 0.13 s. The
# claims' seed jobs run with torch.set_num_threads(1) and render the world in the training process (num_workers 0):
#   ae_t1      the same stage with one intra-op thread (fit, bare, loader alone)
#   ae_t1_nw4  one thread, the world rendered by 4 loader worker processes
#   vdm_t1     VDM joint GPU tier's U-Net stage, bare, one thread (16 threads: 0.087 s)
#   pilot      video_ldm/sprites_claim_gpu, one seed, 600 autoencoder + 600 image steps, data.num_workers=4 (the
#              pipeline itself, time-boxed; log lines prefixed with seconds since start)
#   tests/bench/gpu_step_diag2.sh OUT_DIR [PYTHON]        DIAG_CPU=1: dry run on CPU at tiny sizes
set -u
out=${1:-outputs/bench/gpu_step_diag2}
py=${2:-python3}
mkdir -p "$out"
dev=cuda small=() steps=60 warm=10 b=16
if [[ -n "${DIAG_CPU:-}" ]]; then
    dev=cpu steps=8 warm=2 b=1
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
ae=(--experiment video_ldm/sprites_claim_gpu --stage autoencoder --override claim.autoencoder_batch_size=$b --threads 1)
one ae_t1 100 "${ae[@]}" --data-batches 20
one ae_t1_nw4 100 "${ae[@]}" --override data.num_workers=4
vdm=(--experiment vdm/sprites_joint_claim_gpu --stage main --threads 1)
[[ -n "${DIAG_CPU:-}" ]] && vdm+=(--override model.image_size=16 --override model.base_channels=16
                                  --override "model.channel_mult=[1,2]" --override "model.attention_resolutions=[8]"
                                  --override data.batch_size=1 --override "module.sample_shape=[3,2,16,16]")
one vdm_t1 80 "${vdm[@]}" --bare-only
[[ -n "${DIAG_CPU:-}" ]] && export PILOT_CPU=1
PILOT_ONLY=video_ldm T_VIDEO_LDM=${T_PILOT:-150} \
    PILOT_EXTRA_video_ldm="claim.seeds=[0] claim.workers=1 data.num_workers=4" tests/bench/gpu_tier_pilot.sh "$out/pilot" "$py"
