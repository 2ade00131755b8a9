"""CLIP scores of generated images and videos, with open_clip and LOCAL weights (nothing downloads).

- ``clipsim`` (CLIPSIM, Wu et al. 2021 "GODIVA", Sec. 4; the text-video metric of Make-A-Video / Video LDM /
  AnimateDiff tables): the cosine similarity between CLIP's embedding of each frame and of the caption, averaged
  over the frames and the videos (an image is a one-frame video). Reported as the raw cosine (papers print it
  either raw, 0.2–0.35, or x100).
- ``clip_frame_consistency`` (the temporal-consistency "CLIP score" of Esser et al. 2023, Gen-1, Sec. 4.1, and
  later editing papers): the mean cosine similarity of CLIP image embeddings of consecutive frames.

:func:`load_clip` builds an open_clip model by name (``ViT-L-14``, ``ViT-B-32``, ``ViT-L-14-quickgelu`` for
OpenAI's weights, ...; ``model_config`` may name a JSON config file for a model open_clip does not ship) and
loads the weights file strictly. Images are preprocessed as open_clip does (bicubic resize of the shorter side to
the model's image size, centre crop, the model's mean/std) — in torch, on batches in [-1, 1].
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

__all__ = ["ClipScorer", "load_clip", "clipsim", "clip_frame_consistency"]


class ClipScorer:
    """An open_clip model with its tokenizer and preprocessing; embeddings are L2-normalised."""

    def __init__(self, model, tokenizer, image_size: int, mean, std):
        self.model, self.tokenizer = model.eval().requires_grad_(False), tokenizer
        self.image_size = int(image_size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    @property
    def device(self):
        return next(self.model.parameters()).device

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"images must be (N, 1 or 3, H, W) in [-1, 1], got shape {tuple(images.shape)}")
        x = (images.float().clamp(-1, 1) + 1) / 2
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        h, w = x.shape[-2:]
        s = self.image_size / min(h, w)
        size = (max(self.image_size, round(h * s)), max(self.image_size, round(w * s)))
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False).clamp(0, 1)
        top, left = (size[0] - self.image_size) // 2, (size[1] - self.image_size) // 2
        x = x[:, :, top : top + self.image_size, left : left + self.image_size]
        return (x - self.mean) / self.std

    @torch.no_grad()
    def image_embeddings(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        out = []
        for i in range(0, len(images), batch_size):
            x = self.preprocess(images[i : i + batch_size]).to(self.device)
            out.append(F.normalize(self.model.encode_image(x).float(), dim=-1).cpu())
        return torch.cat(out)

    @torch.no_grad()
    def text_embeddings(self, captions: list[str]) -> torch.Tensor:
        tokens = self.tokenizer([str(c) for c in captions]).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu()


def load_clip(model: str = "ViT-L-14", weights_path: str | Path | None = None,
              model_config: str | Path | None = None, device: str = "cpu") -> ClipScorer:
    """An open_clip model ``model`` with the weights of the local file ``weights_path``."""
    import open_clip

    p = Path(str(weights_path)).expanduser() if weights_path else None
    if p is None or not p.is_file():
        raise FileNotFoundError(f"CLIP weights not found at '{weights_path}': CLIPSIM / CLIP consistency need a local "
                                f"open_clip weights file for {model} (open_clip_pytorch_model.bin of its Hugging Face "
                                "repository, see docs/DATA_AND_WEIGHTS.md); nothing is downloaded")
    if str(model).startswith(("hf-hub:", "local-dir:")):
        raise ValueError(f"clip model {model!r}: give an open_clip model name (ViT-L-14, ...) and weights_path")
    if model_config is not None:
        cfg_path = Path(str(model_config)).expanduser()
        if not cfg_path.is_file():
            raise FileNotFoundError(f"open_clip model config not found: {model_config}")
        name = json.loads(cfg_path.read_text()).get("name") or cfg_path.stem
        if name != model:
            raise ValueError(f"model_config {cfg_path} defines {name!r}, not the requested {model!r}")
        open_clip.add_model_config(cfg_path)
    if open_clip.get_model_config(model) is None:
        raise ValueError(f"unknown open_clip model {model!r} (give model_config=<its .json> for a custom one)")
    net = open_clip.create_model(model, pretrained=None, device=device)
    try:
        state = torch.load(p, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 - e.g. OpenAI's TorchScript .pt: load it with open_clip once, save the state dict
        raise ValueError(f"cannot read CLIP weights {p} as a state dict ({type(e).__name__}); open_clip's "
                         "open_clip_pytorch_model.bin is one") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{p} does not fit open_clip {model}: missing {sorted(missing)[:3]}, "
                         f"unexpected {sorted(unexpected)[:3]}")
    size = net.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    pcfg = getattr(net.visual, "preprocess_cfg", {}) or {}
    mean = pcfg.get("mean", open_clip.OPENAI_DATASET_MEAN)
    std = pcfg.get("std", open_clip.OPENAI_DATASET_STD)
    return ClipScorer(net, open_clip.get_tokenizer(model), size, mean, std)


def _as_video(x: torch.Tensor) -> torch.Tensor:
    if x.ndim == 4:
        return x.unsqueeze(2)
    if x.ndim != 5:
        raise ValueError(f"expected images (B, C, H, W) or videos (B, C, T, H, W), got shape {tuple(x.shape)}")
    return x


def _frames(v: torch.Tensor) -> torch.Tensor:
    b, c, t, h, w = v.shape
    return v.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)


def clipsim(samples: torch.Tensor, captions: list[str], clip: ClipScorer, reduction: str = "mean"):
    """Mean cosine similarity between every frame and its sample's caption (``reduction="none"``: per sample)."""
    v = _as_video(samples)
    if len(captions) != v.shape[0]:
        raise ValueError(f"clipsim needs one caption per sample: {len(captions)} captions, {v.shape[0]} samples")
    img = clip.image_embeddings(_frames(v)).view(v.shape[0], v.shape[2], -1)
    txt = clip.text_embeddings(list(captions))
    per = (img * txt[:, None]).sum(-1).mean(1)
    return per if reduction == "none" else float(per.mean())


def clip_frame_consistency(videos: torch.Tensor, clip: ClipScorer, reduction: str = "mean"):
    """Mean cosine similarity of CLIP embeddings of consecutive frames (1 for a static video)."""
    from shared.metrics.video import frame_consistency

    return frame_consistency(videos, feature_fn=clip.image_embeddings, reduction=reduction)
