#!/usr/bin/env bash
# Optional: download the freely downloadable weights of docs/DATA_AND_WEIGHTS.md into its layout, on a machine
# with internet. Nothing in the project runs this (the code only reads local files; the tests never download).
#
#   tools/fetch_weights.sh [WEIGHTS_DIR] [WHAT...]     WHAT: inception dit vae sd15 animatediff clip lpips i3d (default: all)
#
# Hugging Face repositories go through the `hf` CLI of huggingface_hub (installed with diffusers); accepting a
# model's licence on the Hub first may be needed. Files with a published hash are checked.
set -euo pipefail
DIR="${1:-weights}"
shift || true
WHAT=("$@")
[ ${#WHAT[@]} -eq 0 ] && WHAT=(inception dit vae sd15 animatediff clip lpips i3d)
mkdir -p "$DIR"

fetch() {  # URL DEST
  if [ -s "$2" ]; then echo "have $2"; return; fi
  mkdir -p "$(dirname "$2")"
  echo "get  $2"
  curl -fL --retry 3 -o "$2.part" "$1" && mv "$2.part" "$2"
}
sha_prefix() {  # FILE PREFIX: torch.hub's convention, the file name carries the start of its sha256
  local got; got=$(sha256sum "$1" | cut -c1-${#2})
  [ "$got" = "$2" ] || { echo "checksum mismatch for $1: sha256 starts $got, expected $2" >&2; exit 1; }
}
hf_get() {  # REPO DEST [FILES...]
  local repo=$1 dest=$2; shift 2
  command -v hf >/dev/null || { echo "the hf CLI (pip install huggingface_hub) is needed for $repo" >&2; exit 1; }
  HF_HUB_OFFLINE=0 hf download "$repo" "$@" --local-dir "$dest"
}

for w in "${WHAT[@]}"; do
  case "$w" in
    inception)
      f="$DIR/inception/pt_inception-2015-12-05-6726825d.pth"
      fetch https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth "$f"
      sha_prefix "$f" 6726825d ;;
    dit)
      fetch https://dl.fbaipublicfiles.com/DiT/models/DiT-XL-2-256x256.pt "$DIR/DiT-XL-2-256x256.pt"
      fetch https://dl.fbaipublicfiles.com/DiT/models/DiT-XL-2-512x512.pt "$DIR/DiT-XL-2-512x512.pt" ;;
    vae)
      hf_get stabilityai/sd-vae-ft-ema "$DIR/sd-vae-ft-ema" config.json diffusion_pytorch_model.safetensors ;;
    sd15)
      hf_get stable-diffusion-v1-5/stable-diffusion-v1-5 "$DIR/stable-diffusion-v1-5" \
        unet/config.json unet/diffusion_pytorch_model.safetensors text_encoder/config.json \
        text_encoder/model.safetensors vae/config.json vae/diffusion_pytorch_model.safetensors ;;
    animatediff)
      hf_get guoyww/animatediff "$DIR/animatediff" mm_sd_v15.ckpt mm_sd_v15_v2.ckpt ;;
    clip)
      hf_get laion/CLIP-ViT-L-14-laion2B-s32B-b82K "$DIR/open_clip/ViT-L-14" open_clip_pytorch_model.bin ;;
    lpips)
      f="$DIR/lpips/vgg16-397923af.pth"
      fetch https://download.pytorch.org/models/vgg16-397923af.pth "$f"
      sha_prefix "$f" 397923af
      fetch https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth "$DIR/lpips/vgg.pth" ;;
    i3d)
      echo "i3d: download i3d_torchscript.pt by the link in universome/stylegan-v (src/metrics/frechet_video_distance.py)"
      echo "     into $DIR/i3d/i3d_torchscript.pt (a Dropbox link; not fetched automatically)" ;;
    *) echo "unknown item $w (inception dit vae sd15 animatediff clip lpips i3d)" >&2; exit 2 ;;
  esac
done
echo "done: $DIR (see docs/DATA_AND_WEIGHTS.md for what uses each file)"
