"""CLIP's text tower (Radford et al. 2021), the text encoder Stable Diffusion 1.x conditions on.

SD-1.x (Rombach et al. 2022, Sec. 4.3.2 / App. E) encodes a caption with the frozen CLIP ViT-L/14 text
transformer and feeds the *last hidden states* of all 77 token positions (B, 77, 768), after the final
LayerNorm, to every cross-attention layer of the U-Net as ``context``. The tower:

* byte-level BPE tokens (49,408-entry vocabulary; ``<|startoftext|>`` = 49406, ``<|endoftext|>`` = 49407),
  ``[SOT] tokens[:75] [EOT]`` padded to 77 — with EOT, as SD's tokenizer does (``pad_id``);
* token + learned absolute position embeddings; pre-LayerNorm blocks of causal self-attention and a
  QuickGELU MLP (``x * sigmoid(1.702 x)``, ratio 4; other towers: the config's ``hidden_act``, exact GELU or its
  tanh approximation ``gelu_new``); a final LayerNorm.

:class:`CLIPTextEncoder` keeps the key names of the released checkpoints (``text_model.embeddings.*``,
``text_model.encoder.layers.{i}.self_attn.{q,k,v,out}_proj``, ``layer_norm1/2``, ``mlp.fc1/fc2``,
``text_model.final_layer_norm``), so a Stable Diffusion folder's ``text_encoder/model.safetensors`` (or a
single-file checkpoint's ``cond_stage_model.transformer.*``) loads with :func:`load_clip_text_encoder` without
conversion; attention runs through ``scaled_dot_product_attention``. The BPE vocabulary is the one shipped
inside ``open_clip`` (nothing is downloaded). At CPU scale the same class is built tiny and trained with the
diffusion model (``trainable: true``), as LDM does for its small text-conditional models.

:class:`TextConditioner` ties tokenizer and encoder together: captions in, ``context`` out; the empty caption is
the null condition of classifier-free guidance (SD's convention), and training drops captions to it.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from shared.nn.build import buildable

SOT_ID, EOT_ID, VOCAB_SIZE = 49406, 49407, 49408

__all__ = ["CLIPTokenizer", "CLIPTextEncoder", "TextConditioner", "sd15_text_encoder_kwargs",
           "load_clip_text_encoder", "text_conditioner", "SOT_ID", "EOT_ID"]


def sd15_text_encoder_kwargs(**overrides) -> dict:
    """CLIP ViT-L/14's text tower (SD-1.x): width 768, 12 layers, 12 heads, MLP 3072, 77 positions."""
    return {"vocab_size": VOCAB_SIZE, "max_len": 77, "width": 768, "layers": 12, "heads": 12, "mlp_dim": 3072,
            "act": "quick_gelu", "eps": 1e-5, **overrides}


class CLIPTokenizer:
    """Captions -> ``(B, max_len)`` token ids: ``[SOT] bpe(caption)[: max_len - 2] [EOT]`` then ``pad_id``.

    The BPE (lower-casing, ftfy and whitespace clean-up) is open_clip's ``SimpleTokenizer`` with its bundled
    vocabulary, the same merges as SD's ``tokenizer/`` folder."""

    def __init__(self, max_len: int = 77, pad_id: int = EOT_ID):
        from open_clip.tokenizer import SimpleTokenizer

        if max_len < 2:
            raise ValueError(f"max_len must hold at least the start and end tokens, got {max_len}")
        self.bpe, self.max_len, self.pad_id = SimpleTokenizer(), int(max_len), int(pad_id)

    def __call__(self, captions: Sequence[str] | str) -> torch.Tensor:
        if isinstance(captions, str):
            captions = [captions]
        ids = torch.full((len(captions), self.max_len), self.pad_id, dtype=torch.long)
        for i, text in enumerate(captions):
            if not isinstance(text, str):
                raise TypeError(f"caption {i} is {type(text).__name__}, not a string")
            toks = [SOT_ID, *self.bpe.encode(text)[: self.max_len - 2], EOT_ID]
            ids[i, : len(toks)] = torch.tensor(toks)
        return ids


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int, causal: bool = True):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads, self.causal = heads, bool(causal)
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(width, width) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape

        def split(t):
            return t.view(b, n, self.heads, c // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)),
                                             is_causal=self.causal)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, c))


# the MLP activations of transformers' ``hidden_act`` names: QuickGELU, exact (erf) GELU, and the tanh approximation
# ``0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))`` that both ``gelu_new`` and ``gelu_pytorch_tanh`` name
ACTIVATIONS = ("quick_gelu", "gelu", "gelu_new", "gelu_pytorch_tanh")


class _MLP(nn.Module):
    def __init__(self, width: int, hidden: int, act: str):
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"unknown activation {act!r}; choose one of {ACTIVATIONS} (quick_gelu: CLIP, SD-1.x; "
                             "gelu: OpenCLIP H/G; gelu_new / gelu_pytorch_tanh: GELU's tanh approximation)")
        self.fc1, self.fc2, self.act = nn.Linear(width, hidden), nn.Linear(hidden, width), act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        if self.act == "quick_gelu":
            h = h * torch.sigmoid(1.702 * h)
        else:
            h = F.gelu(h, approximate="none" if self.act == "gelu" else "tanh")
        return self.fc2(h)


class _Layer(nn.Module):
    """One pre-LN transformer layer of CLIP (causal attention in the text tower; the image tower,
    ``shared.nn.image_embedding``, builds it with ``causal=False``)."""

    def __init__(self, width: int, heads: int, mlp_dim: int, act: str, eps: float, causal: bool = True):
        super().__init__()
        self.layer_norm1, self.self_attn = nn.LayerNorm(width, eps=eps), _Attention(width, heads, causal)
        self.layer_norm2, self.mlp = nn.LayerNorm(width, eps=eps), _MLP(width, mlp_dim, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class _Embeddings(nn.Module):
    def __init__(self, vocab_size: int, max_len: int, width: int):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.position_embedding = nn.Embedding(max_len, width)


class _Encoder(nn.Module):
    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(layers)


class _TextModel(nn.Module):
    def __init__(self, vocab_size, max_len, width, layers, heads, mlp_dim, act, eps):
        super().__init__()
        self.embeddings = _Embeddings(vocab_size, max_len, width)
        self.encoder = _Encoder([_Layer(width, heads, mlp_dim, act, eps) for _ in range(layers)])
        self.final_layer_norm = nn.LayerNorm(width, eps=eps)


class CLIPTextEncoder(nn.Module):
    """Token ids ``(B, L)`` -> last hidden states ``(B, L, width)`` (after the final LayerNorm)."""

    def __init__(self, vocab_size: int = VOCAB_SIZE, max_len: int = 77, width: int = 768, layers: int = 12,
                 heads: int = 12, mlp_dim: int | None = None, act: str = "quick_gelu", eps: float = 1e-5):
        super().__init__()
        self.vocab_size, self.max_len, self.width = int(vocab_size), int(max_len), int(width)
        self.text_model = _TextModel(vocab_size, max_len, width, layers, heads, mlp_dim or 4 * width, act, eps)
        nn.init.normal_(self.text_model.embeddings.token_embedding.weight, std=0.02)
        nn.init.normal_(self.text_model.embeddings.position_embedding.weight, std=0.01)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.dim() != 2:
            raise ValueError(f"token ids must be (batch, length), got shape {tuple(ids.shape)}")
        if ids.shape[1] > self.max_len:
            raise ValueError(f"{ids.shape[1]} tokens exceed the encoder's {self.max_len} positions")
        if int(ids.max()) >= self.vocab_size or int(ids.min()) < 0:
            raise ValueError(f"token ids must lie in [0, {self.vocab_size}); got {int(ids.min())}..{int(ids.max())}")
        tm = self.text_model
        x = tm.embeddings.token_embedding(ids) + tm.embeddings.position_embedding.weight[: ids.shape[1]]
        for layer in tm.encoder.layers:
            x = layer(x)
        return tm.final_layer_norm(x)


class TextConditioner(nn.Module):
    """Captions -> ``context`` for cross-attention: a :class:`CLIPTokenizer` and a :class:`CLIPTextEncoder`.

    ``trainable=False`` (SD) freezes the encoder and keeps it in eval mode; ``trainable=True`` trains it with
    the diffusion model (LDM's small text models)."""

    def __init__(self, encoder: CLIPTextEncoder, trainable: bool = False, pad_id: int = EOT_ID):
        super().__init__()
        self.encoder, self.trainable = encoder, bool(trainable)
        self.tokenizer = CLIPTokenizer(encoder.max_len, pad_id)
        self.encoder.requires_grad_(self.trainable)
        if not self.trainable:
            self.encoder.eval()

    @property
    def context_dim(self) -> int:
        return self.encoder.width

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.trainable:
            self.encoder.eval()
        return self

    def forward(self, captions: Sequence[str] | str) -> torch.Tensor:
        ids = self.tokenizer(captions).to(self.encoder.text_model.embeddings.token_embedding.weight.device)
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            return self.encoder(ids)


# ------------------------------------------------------------------------------------------ loading
_HF_PREFIXES = ("cond_stage_model.transformer.", "transformer.")
_BARE = ("embeddings.", "encoder.", "final_layer_norm.")


def _config_kwargs(config: dict) -> dict:
    """Our arguments from a ``CLIPTextConfig`` (``text_encoder/config.json``)."""
    act = config.get("hidden_act", "quick_gelu")
    return {"vocab_size": config.get("vocab_size", VOCAB_SIZE), "max_len": config.get("max_position_embeddings", 77),
            "width": config["hidden_size"], "layers": config["num_hidden_layers"],
            "heads": config["num_attention_heads"], "mlp_dim": config.get("intermediate_size"),
            "act": act, "eps": config.get("layer_norm_eps", 1e-5)}


def load_clip_text_encoder(path: str | Path, **overrides) -> CLIPTextEncoder:
    """A :class:`CLIPTextEncoder` with released weights from a local path (nothing is downloaded):

    * a Stable Diffusion folder (``text_encoder/config.json`` + ``model.safetensors`` or ``pytorch_model.bin``)
      or the ``text_encoder`` folder itself — the config gives the architecture;
    * a single ``.safetensors``/``.ckpt``: a CLIPTextModel state dict, or an SD checkpoint whose text tower
      sits under ``cond_stage_model.transformer.`` — SD-1.5's architecture (:func:`sd15_text_encoder_kwargs`).

    Keys are matched strictly: a missing or unexpected tensor, or a shape mismatch, is a one-line error."""
    from shared.nn.sd_unet import find_component
    from shared.nn.weights import read_state_dict

    weights, config = find_component(path, "text_encoder", ("model.safetensors", "pytorch_model.bin"),
                                     "CLIP text-encoder")
    kwargs = {**_config_kwargs(config), **overrides} if config else sd15_text_encoder_kwargs(**overrides)
    state = read_state_dict(weights)
    for prefix in _HF_PREFIXES:
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            break
    if not any(k.startswith("text_model.") for k in state):  # transformers >= 5 saves without the prefix
        state = {"text_model." + k: v for k, v in state.items() if k.startswith(_BARE)}
    state = {k: v for k, v in state.items() if k.startswith("text_model.") and not k.endswith("position_ids")}
    if not state:
        raise ValueError(f"{weights} holds no CLIP text-model tensors (text_model.* keys)")
    encoder = CLIPTextEncoder(**kwargs)
    mine = encoder.state_dict()
    missing, unexpected = sorted(set(mine) - set(state)), sorted(set(state) - set(mine))
    shapes = [k for k in set(mine) & set(state) if mine[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        detail = (f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}" if unexpected
                  else f"shape of {shapes[0]}: {tuple(state[shapes[0]].shape)} vs {tuple(mine[shapes[0]].shape)}")
        raise ValueError(f"{weights} does not match a CLIP text encoder of {kwargs}: {detail}")
    encoder.load_state_dict(state, strict=True)
    return encoder


@buildable
def text_conditioner(weights: str | None = None, trainable: bool = False, pad_id: int = EOT_ID,
                     **encoder_kwargs) -> TextConditioner:
    """Hydra target: released weights from ``weights`` (SD: frozen) or a fresh encoder of ``encoder_kwargs``."""
    encoder = load_clip_text_encoder(weights) if weights else CLIPTextEncoder(**encoder_kwargs)
    return TextConditioner(encoder, trainable=trainable, pad_id=pad_id)
