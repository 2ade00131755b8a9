"""Diffusion transformers: DiT (Peebles & Xie, "Scalable Diffusion Models with Transformers", ICCV 2023).

A DiT is a ViT over patches of the (latent) image (Sec. 3.2, Fig. 3):

* **patchify** — ``PatchEmbed`` (timm) turns an ``I x I x C`` input into ``T = (I/p)^2`` tokens of width
  ``d``,
  plus the fixed (not trained) 2D sine-cosine position embedding of ViT/MAE;
* **blocks** — the conditioning variants of Sec. 3.2 "DiT block design", selected by ``conditioning``:
    - ``adaln_zero``: adaLN whose scale/shift *and* residual gates ``alpha`` are regressed from ``c = t_emb +
      y_emb``,
      the regressing linear zero-initialised so every block starts as the identity;
    - ``adaln``: adaptive layer norm (scale/shift from ``c``), no gates;
    - ``cross_attn``: ``[t_emb, y_emb]`` as a length-2 sequence that a multi-head cross-attention layer after
      the
      self-attention attends to;
    - ``in_context``: ``t_emb`` and ``y_emb`` appended as two tokens to the image sequence (removed before the
      final layer), standard ViT blocks;
* **decoder** — final (adaptive) layer norm and a linear map of each token to ``p x p x 2C`` (noise and, with
  ``learn_sigma``, the variance interpolation ``v`` of Improved DDPM, Eq. 15), then **unpatchify**.

Attention and MLP are timm's ``Attention`` (fused: ``F.scaled_dot_product_attention``) and ``Mlp`` (GELU, tanh
approximation). Module and parameter names follow the official implementation (facebookresearch/DiT,
``models.py``) so its released checkpoints load with ``load_state_dict`` (see ``official_state_dict_shapes``):
``x_embedder.proj``, ``t_embedder.mlp.{0,2}``, ``y_embedder.embedding_table``, ``pos_embed``,
``blocks.N.attn.qkv/proj``,
``blocks.N.mlp.fc1/fc2``, ``blocks.N.adaLN_modulation.1``,
``final_layer.norm_final/linear/adaLN_modulation.1``.

Tensors: images ``(B, C, H, W)``; the network is ``net(x, t_net, y=None, context=None)`` like the shared
U-Net,
with ``num_classes`` and ``null_label`` (index ``num_classes``, the CFG null class, as in the official label
table of ``num_classes + 1`` rows).
"""

from __future__ import annotations

import torch
from einops import rearrange
from timm.layers import Mlp, PatchEmbed
from timm.layers.attention import Attention
from torch import nn

from shared.nn.attention import sdpa_heads
from shared.nn.embeddings import TimestepEmbedding

CONDITIONINGS = ("adaln_zero", "adaln", "cross_attn", "in_context")


# ---------------------------------------------------------------------------------------------- positions
def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """(M,) positions → (M, dim) ``[sin(pos w_i), cos(pos w_i)]``, ``w_i = 10000^(-2i/dim)``."""
    if dim % 2:
        raise ValueError(f"sine-cosine embedding needs an even dim, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    out = pos.reshape(-1).to(torch.float64)[:, None] * omega[None]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_2d(dim: int, grid_h: int, grid_w: int | None = None) -> torch.Tensor:
    """(grid_h * grid_w, dim) fixed 2D sine-cosine position embedding (MAE's, used by DiT, Sec. 3.2).

    Tokens are in row-major order (token ``k = row * grid_w + col``, as ``PatchEmbed`` flattens); the first
    ``dim/2`` channels encode the column, the last ``dim/2`` the row — the official layout, so a released
    checkpoint's ``pos_embed`` equals ours.
    """
    grid_w = grid_h if grid_w is None else grid_w
    if dim % 4:
        raise ValueError(f"2D sine-cosine embedding needs dim divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    return torch.cat([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], dim=1).float()


# ---------------------------------------------------------------------------------------------- patches
def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) → (B, H/p * W/p, p * p * C) tokens, channel-last within a patch (the decoder's layout)."""
    return rearrange(x, "b c (h p) (w q) -> b (h w) (p q c)", p=p, q=p)


def unpatchify(
    tokens: torch.Tensor, p: int, channels: int, grid_h: int, grid_w: int | None = None
) -> torch.Tensor:
    """Inverse of :func:`patchify`: (B, T, p * p * C) → (B, C, H, W) (official ``DiT.unpatchify`` order)."""
    grid_w = grid_h if grid_w is None else grid_w
    return rearrange(tokens, "b (h w) (p q c) -> b c (h p) (w q)", h=grid_h, w=grid_w, p=p, q=p, c=channels)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: ``x * (1 + scale) + shift`` with per-sample (B, D) parameters over (B, T, D) tokens.

    One fused ``addcmul`` (no (B, T, D) temporary for ``x * (1 + scale)``): on CPU, modulation plus gated
    residual forward + backward took 0.68x the time of the unfused expression (README, Performance)."""
    return torch.addcmul(shift.unsqueeze(1), x, 1 + scale.unsqueeze(1))


def gated_residual(x: torch.Tensor, gate: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """adaLN-Zero's residual ``x + gate * h`` with a per-sample (B, D) gate, as one fused ``addcmul``."""
    return torch.addcmul(x, gate.unsqueeze(1), h)


# ---------------------------------------------------------------------------------------------- embedders
class LabelEmbedder(nn.Module):
    """Class labels → vectors; row ``num_classes`` is the null label of classifier-free guidance.

    Label dropout is *not* done here (the official embedder drops labels inside ``forward``): the shared
    ``DiffusionModule`` drops them with ``cond_drop_prob`` so every class-conditional net behaves alike.
    """

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.embedding_table = nn.Embedding(num_classes + 1, dim)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(y)


class CrossAttention(nn.Module):
    """Multi-head cross-attention from tokens (B, N, D) to a context (B, M, D) through SDPA."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        k, v = self.kv(context).chunk(2, dim=-1)
        return self.proj(sdpa_heads(self.q(x), k, v, self.num_heads))


# ---------------------------------------------------------------------------------------------- blocks
class DiTBlock(nn.Module):
    """One DiT block (Sec. 3.2, Fig. 3) with the conditioning ``conditioning`` (see module docstring).

    ``forward(x, c, context)``: ``x`` (B, T, D) tokens, ``c`` (B, D) the summed time+class embedding (adaLN
    variants), ``context`` (B, M, D) the condition tokens (cross-attention variant).
    """

    def __init__(
        self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, conditioning: str = "adaln_zero"
    ):
        super().__init__()
        if conditioning not in CONDITIONINGS:
            raise ValueError(f"unknown conditioning {conditioning!r}; choose one of {CONDITIONINGS}")
        self.conditioning = conditioning
        adaptive = conditioning in ("adaln", "adaln_zero")
        # adaLN regresses the norm's scale/shift, so the norm itself has no affine parameters (official
        # layout);
        # the plain ViT variants keep LayerNorm's own affine parameters.
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=not adaptive, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads=num_heads, qkv_bias=True)
        if conditioning == "cross_attn":
            self.norm_cross = nn.LayerNorm(hidden_size, eps=1e-6)
            self.cross_attn = CrossAttention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=not adaptive, eps=1e-6)
        self.mlp = Mlp(
            in_features=hidden_size,
            hidden_features=int(hidden_size * mlp_ratio),
            act_layer=lambda: nn.GELU(approximate="tanh"),
            drop=0,
        )
        if adaptive:
            n_mod = 6 if conditioning == "adaln_zero" else 4  # (shift, scale, gate) x 2 or (shift, scale) x 2
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, n_mod * hidden_size))

    def forward(
        self, x: torch.Tensor, c: torch.Tensor | None = None, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.conditioning == "adaln_zero":
            shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(
                6, dim=1
            )
            x = gated_residual(x, gate_msa, self.attn(modulate(self.norm1(x), shift_msa, scale_msa)))
            return gated_residual(x, gate_mlp, self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp)))
        if self.conditioning == "adaln":
            shift_msa, scale_msa, shift_mlp, scale_mlp = self.adaLN_modulation(c).chunk(4, dim=1)
            x = x + self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
            return x + self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        x = x + self.attn(self.norm1(x))
        if self.conditioning == "cross_attn":
            x = x + self.cross_attn(self.norm_cross(x), context)
        return x + self.mlp(self.norm2(x))


class FinalLayer(nn.Module):
    """Decoder of DiT: (adaptive) layer norm, then a linear map of each token to ``p * p * out_channels``."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int, adaptive: bool = True):
        super().__init__()
        self.adaptive = adaptive
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=not adaptive, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        if adaptive:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        if self.adaptive:
            shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
            x = modulate(self.norm_final(x), shift, scale)
        else:
            x = self.norm_final(x)
        return self.linear(x)


# ---------------------------------------------------------------------------------------------- the network
class DiT(nn.Module):
    """Diffusion transformer (Peebles & Xie 2023). Sizes (Table 1) live in ``conf/model/dit_*.yaml``.

    Args:
        input_size: side of the (latent) input, e.g. 32 for 256² images through the SD VAE.
        patch_size: ``p``; the sequence has ``(input_size / p)^2`` tokens.
        in_channels: input channels (4 for SD-VAE latents, 1 for pixel-space digits).
        hidden_size, depth, num_heads, mlp_ratio: the transformer (Table 1).
        num_classes: class-conditional with a null class for CFG (``None``: unconditional; the label table is
            then absent).
        learn_sigma: output ``2 * in_channels`` channels — eps, then Improved DDPM's variance interpolation.
        conditioning: ``adaln_zero`` (the paper's choice), ``adaln``, ``cross_attn`` or ``in_context``.
        freq_dim: width of the sinusoidal time features fed to ``t_embedder``'s MLP.
    """

    def __init__(
        self,
        input_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        num_classes: int | None = 1000,
        learn_sigma: bool = True,
        conditioning: str = "adaln_zero",
        freq_dim: int = 256,
    ):
        super().__init__()
        if conditioning not in CONDITIONINGS:
            raise ValueError(f"unknown conditioning {conditioning!r}; choose one of {CONDITIONINGS}")
        if input_size % patch_size:
            raise ValueError(f"input_size={input_size} is not a multiple of patch_size={patch_size}")
        self.input_size, self.patch_size, self.in_channels = input_size, patch_size, in_channels
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.learn_sigma, self.conditioning, self.num_classes = learn_sigma, conditioning, num_classes
        self.hidden_size, self.depth, self.num_heads = hidden_size, depth, num_heads
        self.grid = input_size // patch_size

        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size, bias=True)
        self.t_embedder = TimestepEmbedding(freq_dim, hidden_size)  # .mlp.0 / .mlp.2 as in the official code
        self.y_embedder = LabelEmbedder(num_classes, hidden_size) if num_classes else None
        # Fixed sin-cos positions: a persistent buffer (in the state dict, as the official frozen parameter
        # is,
        # but never seen by the optimiser).
        self.register_buffer("pos_embed", sincos_2d(hidden_size, self.grid).unsqueeze(0), persistent=True)
        self.blocks = nn.ModuleList(
            DiTBlock(hidden_size, num_heads, mlp_ratio, conditioning) for _ in range(depth)
        )
        self.final_layer = FinalLayer(
            hidden_size, patch_size, self.out_channels, adaptive=conditioning in ("adaln", "adaln_zero")
        )
        self.initialize_weights()

    @property
    def null_label(self) -> int | None:
        return self.num_classes if self.y_embedder is not None else None

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    def initialize_weights(self) -> None:
        """The paper's initialisation (Sec. 3.2; official ``initialize_weights``): Xavier-uniform linears with
        zero biases, the patch projection initialised like a linear, N(0, 0.02) time-MLP and label table, and
        for adaLN-Zero the modulation regressors zero so each block's gates ``alpha`` start at 0 (identity
        block). The final linear is zero in every variant, so the initial prediction is 0."""

        def _basic(m):
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

        self.apply(_basic)
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        if self.conditioning == "adaln_zero":
            for block in self.blocks:
                nn.init.zeros_(block.adaLN_modulation[-1].weight)
                nn.init.zeros_(block.adaLN_modulation[-1].bias)
        if self.final_layer.adaptive:
            nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
            nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def condition(self, t: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(t_emb, y_emb)``; a missing label means the null label (unconditional pass of CFG)."""
        t_emb = self.t_embedder(t)
        if self.y_embedder is None:
            if y is not None:
                raise ValueError("labels were given to a DiT built without num_classes")
            return t_emb, None
        if y is None:
            y = torch.full((t_emb.shape[0],), self.null_label, dtype=torch.long, device=t_emb.device)
        if y.device.type != "meta" and ((y < 0).any() or (y > self.num_classes).any()):
            raise ValueError(f"labels must lie in [0, {self.num_classes}] ({self.num_classes} = null label)")
        return t_emb, self.y_embedder(y)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, C, H, W) noisy input, (B,) network time, optional (B,) labels → (B, out_channels, H, W)."""
        if context is not None:
            raise ValueError("DiT is class-conditional; a `context` sequence is not supported")
        b = x.shape[0]
        t = torch.as_tensor(t, device=x.device).reshape(-1)
        t = t.expand(b) if t.numel() == 1 else t
        # timm's PatchEmbed returns (B, T, D) as a transposed view of the conv output (token stride 1); made
        # contiguous once here, else every residual addcmul keeps that layout and each LayerNorm and linear in
        # every block copies its input (a measured 4 % of a DiT-S/2 forward on CPU)
        h = self.x_embedder(x).contiguous() + self.pos_embed
        t_emb, y_emb = self.condition(t, y)
        cond = t_emb if y_emb is None else t_emb + y_emb
        tokens = [t_emb] if y_emb is None else [t_emb, y_emb]
        ctx = torch.stack(tokens, dim=1)  # (B, 1 or 2, D) condition tokens
        if self.conditioning == "in_context":
            h = torch.cat([h, ctx], dim=1)
        for block in self.blocks:
            h = block(h, cond, ctx)
        if self.conditioning == "in_context":
            h = h[:, : self.num_patches]  # drop the condition tokens after the last block
        h = self.final_layer(h, cond)
        return unpatchify(h, self.patch_size, self.out_channels, self.grid)


def official_state_dict_shapes(
    input_size: int = 32,
    patch_size: int = 2,
    in_channels: int = 4,
    hidden_size: int = 1152,
    depth: int = 28,
    num_heads: int = 16,
    mlp_ratio: float = 4.0,
    num_classes: int = 1000,
    learn_sigma: bool = True,
    freq_dim: int = 256,
) -> dict[str, tuple[int, ...]]:
    """Key → shape of an official DiT checkpoint (facebookresearch/DiT ``models.py``), written by hand from
    that layout (not from our module), so a test can hold our state dict against it."""
    d, p, hid = hidden_size, patch_size, int(hidden_size * mlp_ratio)
    out_c = 2 * in_channels if learn_sigma else in_channels
    shapes = {
        "pos_embed": (1, (input_size // p) ** 2, d),
        "x_embedder.proj.weight": (d, in_channels, p, p),
        "x_embedder.proj.bias": (d,),
        "t_embedder.mlp.0.weight": (d, freq_dim),
        "t_embedder.mlp.0.bias": (d,),
        "t_embedder.mlp.2.weight": (d, d),
        "t_embedder.mlp.2.bias": (d,),
        "y_embedder.embedding_table.weight": (num_classes + 1, d),
        "final_layer.linear.weight": (p * p * out_c, d),
        "final_layer.linear.bias": (p * p * out_c,),
        "final_layer.adaLN_modulation.1.weight": (2 * d, d),
        "final_layer.adaLN_modulation.1.bias": (2 * d,),
    }
    for i in range(depth):
        k = f"blocks.{i}."
        shapes.update(
            {
                k + "attn.qkv.weight": (3 * d, d),
                k + "attn.qkv.bias": (3 * d,),
                k + "attn.proj.weight": (d, d),
                k + "attn.proj.bias": (d,),
                k + "mlp.fc1.weight": (hid, d),
                k + "mlp.fc1.bias": (hid,),
                k + "mlp.fc2.weight": (d, hid),
                k + "mlp.fc2.bias": (d,),
                k + "adaLN_modulation.1.weight": (6 * d, d),
                k + "adaLN_modulation.1.bias": (6 * d,),
            }
        )
    return shapes


def load_official_state_dict(net: DiT, state: dict[str, torch.Tensor], strict: bool = True) -> None:
    """Load an official DiT checkpoint (``DiT-XL-2-256x256.pt`` read with ``torch.load(weights_only=True)``,
    possibly wrapped as ``{"ema": ...}`` / ``{"model": ...}``), naming missing/unexpected/mis-shaped keys."""
    for wrapper in ("ema", "model", "state_dict"):
        if wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad = sorted(
        f"{k}: {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    )
    if bad or (strict and (missing or unexpected)):
        raise RuntimeError(
            f"DiT checkpoint does not match: missing {missing}, unexpected {unexpected}, "
            f"shape mismatches {bad}"
        )
    net.load_state_dict(state, strict=strict)


def count_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


__all__ = [
    "CONDITIONINGS",
    "DiT",
    "DiTBlock",
    "FinalLayer",
    "LabelEmbedder",
    "CrossAttention",
    "sincos_1d",
    "sincos_2d",
    "patchify",
    "unpatchify",
    "modulate",
    "official_state_dict_shapes",
    "load_official_state_dict",
    "count_params",
]
