# video-diffusion-papers — one target per paper, plus install / test / demo / report / bench.
# Every target installs what it needs first (a local .venv; torch and torchvision pinned together).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.install-stamp
TRAIN := $(PY) -m shared.engine.train
# A paper target publishes its claim check (results.json + figures into papers/<id>/results/); the train entry
# point refuses to publish a run that is not the experiment's committed protocol. Nothing else writes papers/.
PUBLISH := ++claim.publish=true
export HF_HUB_OFFLINE := 1
export WANDB_MODE := offline
export PYTHONHASHSEED := 0

.DEFAULT_GOAL := help
.PHONY: help install test claims claims-long claims-superseded claims-gpu lint demo report bench bench-gpu clean \
        ddpm ddim rectified_flow instaflow knowledge_distillation progressive_distillation \
        consistency_models few_step_table dit vdm pvdm video_ldm animatediff animate_anyone emo judges \
        text2video_zero long_video latent_shift pyoco videofusion tune_a_video gen1 controlnet_video \
        generative_image_dynamics

help:  ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  make %-26s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)  ## create .venv and install the package with its pinned dependencies

test: $(STAMP)  ## run the test suite (claim checks excluded; about 10 minutes on 2 idle cores; prints the 25 slowest tests)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --timeout=900 --durations=25

CLAIMS_PYTEST := -m pytest -q -n 2 --dist load --maxschedchunk 1 --timeout=7200
claims: $(STAMP)  ## re-run the CPU tier's claim checks (each paper's current claims, within 10 min of one core each; about 30 min on 2 cores) against their committed evidence
	OMP_NUM_THREADS=1 $(PY) $(CLAIMS_PYTEST) -m "claims and not claims_long and not claims_superseded"

claims-long: $(STAMP)  ## the longer CPU tier of claim checks (claim.tier: long, up to 30 min each on one core; hours)
	OMP_NUM_THREADS=1 $(PY) $(CLAIMS_PYTEST) -m "claims_long"

claims-superseded: $(STAMP)  ## re-run the first designs a later claim supersedes (claim.superseded_by; what was tried), against their evidence
	OMP_NUM_THREADS=1 $(PY) $(CLAIMS_PYTEST) -m "claims_superseded"

GPU_CLAIMS := video_ldm/sprites_claim_gpu vdm/sprites_joint_claim_gpu vdm/sprites_extension_claim_gpu \
              animatediff/sprites_claim_gpu pvdm/sprites_claim_gpu
claims-gpu: $(STAMP)  ## the GPU tier of the video claims (one GPU; not yet run to the end, over 10 min each as sized: docs/PERFORMANCE.md), published
	for e in $(GPU_CLAIMS); do $(PY) -m shared.engine.train experiment=$$e $(PUBLISH) || exit 1; done

lint: $(STAMP)  ## ruff over the project
	$(VENV)/bin/ruff check papers shared tests

demo: $(STAMP)  ## the seminar showcase: a few minutes on a laptop CPU; prints where the pictures are
	$(PY) -m tools.demo

report: $(STAMP)  ## regenerate the paper READMEs' results tables and RESULTS.md from committed results
	$(PY) -m tools.report

bench: $(STAMP)  ## time our blocks against diffusers' at the same configuration
	$(PY) -m tools.bench

bench-gpu: $(STAMP)  ## the GPU rows (bf16 eager + torch.compile, DiT-B/2 MFU), time-boxed: BUDGET seconds
	tests/bench/gpu_bench.sh outputs/bench/gpu $(or $(BUDGET),540) $(PY)

judges: $(STAMP)  ## re-train the judge networks (digits, moving digits, puppets, talking faces, styled shapes, oscillating scenes)
	$(PY) -m shared.metrics.train_judge
	$(PY) -m shared.metrics.train_video_judge
	$(PY) -m shared.metrics.train_avatar_judge --world puppets
	$(PY) -m shared.metrics.train_avatar_judge --world talking_faces
	$(PY) -m shared.metrics.train_shapes_judge
	$(PY) -m shared.metrics.train_shapes_judge --camera
	$(PY) -m shared.metrics.train_oscillation_judge

ddpm: $(STAMP)  ## DDPM claim check: L_simple vs VLB on digits, 1000-step ancestral sampling
	$(TRAIN) experiment=ddpm/digits_claim $(PUBLISH)
	$(PY) -m tools.report --paper ddpm

ddim: $(STAMP)  ## DDIM claim check: FD vs steps x eta, inversion, interpolation
	$(TRAIN) experiment=ddim/digits_claim $(PUBLISH)
	$(PY) -m tools.report --paper ddim

rectified_flow: $(STAMP)  ## Rectified flow: 2D toys and digits, reflow and distillation
	$(TRAIN) experiment=rectified_flow/toy2d_claim $(PUBLISH)
	$(TRAIN) experiment=rectified_flow/digits_claim $(PUBLISH)
	$(PY) -m tools.report --paper rectified_flow

instaflow: $(STAMP)  ## InstaFlow: class-conditional reflow + distillation vs direct distillation
	$(TRAIN) experiment=instaflow/digits_claim $(PUBLISH)
	$(TRAIN) experiment=instaflow/sprites_claim $(PUBLISH)
	$(PY) -m tools.report --paper instaflow

knowledge_distillation: $(STAMP)  ## one-step student of a DDIM teacher
	$(TRAIN) experiment=knowledge_distillation/digits_claim $(PUBLISH)
	$(PY) -m tools.report --paper knowledge_distillation

progressive_distillation: $(STAMP)  ## halving rounds 8 -> 4 -> 2 -> 1 steps
	$(TRAIN) experiment=progressive_distillation/digits_claim $(PUBLISH)
	$(TRAIN) experiment=progressive_distillation/digits_claim_budget $(PUBLISH)
	$(PY) -m tools.report --paper progressive_distillation

consistency_models: $(STAMP)  ## consistency distillation, consistency training and improved consistency training
	$(TRAIN) experiment=consistency_models/digits_claim_budget $(PUBLISH)
	$(TRAIN) experiment=consistency_models/digits_ict_claim $(PUBLISH)
	$(PY) -m tools.report --paper consistency_models

few_step_table: $(STAMP)  ## FD_judge vs NFE for every few-step method (from committed results)
	$(PY) -m tools.few_step_table

dit: $(STAMP)  ## DiT: FD vs Gflops over sizes x patches, conditioning ablation, CFG class accuracy
	$(TRAIN) experiment=dit/digits_scaling $(PUBLISH)
	$(TRAIN) experiment=dit/digits_conditioning $(PUBLISH)
	$(TRAIN) experiment=dit/digits_guidance $(PUBLISH)
	$(TRAIN) experiment=dit/gflops_table $(PUBLISH)
	$(PY) -m tools.report --paper dit

vdm: $(STAMP)  ## Video Diffusion Models: joint image-video training, reconstruction-guided extension
	$(TRAIN) experiment=vdm/moving_digits_claim $(PUBLISH)
	$(TRAIN) experiment=vdm/sprites_joint_protocol $(PUBLISH)
	$(TRAIN) experiment=vdm/sprites_joint_claim $(PUBLISH)
	$(PY) -m tools.report --paper vdm

pvdm: $(STAMP)  ## PVDM: triplane-projected video autoencoder + 2D U-Net vs the pixel 3D U-Net (FVD, step time, memory)
	$(TRAIN) experiment=pvdm/moving_digits_claim $(PUBLISH)
	$(PY) -m tools.report --paper pvdm

video_ldm: $(STAMP)  ## Align Your Latents: temporal layers on a frozen image LDM, style transfer, temporal decoder
	$(TRAIN) experiment=video_ldm/moving_digits_claim $(PUBLISH)
	$(TRAIN) experiment=video_ldm/sprites_claim $(PUBLISH)
	$(PY) -m tools.report --paper video_ldm

animatediff: $(STAMP)  ## AnimateDiff: a motion module plugged into personalised (LoRA / fine-tuned) image models; MotionLoRA
	$(TRAIN) experiment=animatediff/moving_digits_claim $(PUBLISH)
	$(TRAIN) experiment=animatediff/sprites_claim $(PUBLISH)
	$(PY) -m tools.report --paper animatediff

animate_anyone: $(STAMP)  ## Animate Anyone: ReferenceNet vs image embedding, pose following, temporal stage (Puppets; + 30-min tiers, v2 = redesign, v3 = v2 with a 2,000-step stage 1)
	$(TRAIN) experiment=animate_anyone/puppets_claim $(PUBLISH)
	$(TRAIN) experiment=animate_anyone/puppets_claim_long $(PUBLISH)
	$(TRAIN) experiment=animate_anyone/puppets_claim_v2 $(PUBLISH)
	$(TRAIN) experiment=animate_anyone/puppets_claim_v3 $(PUBLISH)
	$(PY) -m tools.report --paper animate_anyone

emo: $(STAMP)  ## EMO: audio layers (lip sync vs no audio), identity, speed layers, motion frames (TalkingFaces; v2 = redesign, v3 = mouth-region loss + mixed-noise x_T, temporal = speed layers and motion frames alone, speed = speed varying within a clip, judged with real motion frames; 30-min tiers)
	$(TRAIN) experiment=emo/talking_faces_claim $(PUBLISH)
	$(TRAIN) experiment=emo/talking_faces_claim_v2 $(PUBLISH)
	$(TRAIN) experiment=emo/talking_faces_claim_v3 $(PUBLISH)
	$(TRAIN) experiment=emo/talking_faces_temporal_claim $(PUBLISH)
	$(TRAIN) experiment=emo/talking_faces_speed_claim $(PUBLISH)
	$(PY) -m tools.report --paper emo

text2video_zero: $(STAMP)  ## Text2Video-Zero: training-free video from the image model (motion in the latents + cross-frame attention; MovingDigits + Sprites)
	$(TRAIN) experiment=text2video_zero/moving_digits_claim $(PUBLISH)
	$(TRAIN) experiment=text2video_zero/sprites_claim $(PUBLISH)
	$(PY) -m tools.report --paper text2video_zero

long_video: $(STAMP)  ## Long video: FreeNoise window fusion + noise rescheduling, LVDM autoregressive extension vs naive concatenation (MovingDigits + Sprites)
	$(TRAIN) experiment=long_video/moving_digits_claim $(PUBLISH)
	$(TRAIN) experiment=long_video/sprites_claim $(PUBLISH)
	$(PY) -m tools.report --paper long_video

latent_shift: $(STAMP)  ## Latent-Shift: parameter-free temporal shift in the image U-Net, fine-tuned on videos (MovingDigits + Sprites)
	$(TRAIN) experiment=latent_shift/moving_digits_claim $(PUBLISH)
	$(TRAIN) experiment=latent_shift/sprites_claim $(PUBLISH)
	$(PY) -m tools.report --paper latent_shift

pyoco: $(STAMP)  ## PYoCo: mixed / progressive correlated noise priors vs i.i.d. noise when fine-tuning image -> video (MovingDigits + Sprites)
	$(TRAIN) experiment=pyoco/moving_digits_claim $(PUBLISH)
	$(TRAIN) experiment=pyoco/sprites_claim $(PUBLISH)
	$(PY) -m tools.report --paper pyoco

videofusion: $(STAMP)  ## VideoFusion: base + residual noise with a base (image) and a residual (video) generator vs i.i.d. noise (MovingDigits + Sprites)
	$(TRAIN) experiment=videofusion/moving_digits_claim $(PUBLISH)
	$(TRAIN) experiment=videofusion/sprites_claim $(PUBLISH)
	$(TRAIN) experiment=videofusion/sprites_claim_v2 $(PUBLISH)
	$(PY) -m tools.report --paper videofusion

tune_a_video: $(STAMP)  ## Tune-A-Video: one-shot tuning (sparse-causal attention, tuned queries) + DDIM-inversion edits (MovingDigits + Sprites)
	$(TRAIN) experiment=tune_a_video/moving_digits_claim $(PUBLISH)
	$(TRAIN) experiment=tune_a_video/sprites_claim $(PUBLISH)
	$(TRAIN) experiment=tune_a_video/sprites_claim_v2 $(PUBLISH)
	$(PY) -m tools.report --paper tune_a_video

gen1: $(STAMP)  ## Gen-1: structure (depth at level t_s) + content (a frame's embedding) guided video synthesis, temporal guidance
	$(TRAIN) experiment=gen1/styled_shapes_claim $(PUBLISH)
	$(TRAIN) experiment=gen1/styled_shapes_claim_long $(PUBLISH)
	$(PY) -m tools.report --paper gen1

controlnet_video: $(STAMP)  ## ControlNet on a frozen video model: depth / edge / camera / pose control, per-frame quality and consistency kept (+ a 30-min tier)
	$(TRAIN) experiment=controlnet_video/styled_shapes_claim $(PUBLISH)
	$(TRAIN) experiment=controlnet_video/styled_shapes_camera_claim $(PUBLISH)
	$(TRAIN) experiment=controlnet_video/styled_shapes_claim_long $(PUBLISH)
	$(TRAIN) experiment=controlnet_video/styled_shapes_camera_claim_long $(PUBLISH)
	$(TRAIN) experiment=controlnet_video/puppets_pose_claim $(PUBLISH)
	$(PY) -m tools.report --paper controlnet_video

generative_image_dynamics: $(STAMP)  ## Generative Image Dynamics: adaptive normalisation, coordinated bands, long horizon, loops
	$(TRAIN) experiment=generative_image_dynamics/oscillating_stages claim.workers=2
	$(TRAIN) experiment=generative_image_dynamics/oscillating_normalisation $(PUBLISH)
	$(TRAIN) experiment=generative_image_dynamics/oscillating_coordination $(PUBLISH)
	$(TRAIN) experiment=generative_image_dynamics/oscillating_long_horizon $(PUBLISH)
	$(TRAIN) experiment=generative_image_dynamics/oscillating_looping $(PUBLISH)
	$(PY) -m tools.report --paper generative_image_dynamics

clean:  ## remove outputs (keeps .venv)
	rm -rf outputs reports

.PHONY: gallery sweep_report
gallery: $(STAMP)  ## build the HTML gallery reports/index.html (tables, plots, sample grids, GIF/MP4 videos)
	$(PY) -m tools.report --gallery
	@echo "open reports/index.html (or: cd reports && python3 -m http.server 8000)"

sweep_report: $(STAMP)  ## aggregate a Hydra multirun into one table + plot: make sweep_report DIR=outputs/multirun/<name>/<time>
	$(PY) -m tools.report --multirun $(DIR)
