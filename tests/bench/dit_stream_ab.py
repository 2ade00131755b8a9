"""A/B behind the README's DiT memory note: our DiT keeps its residual stream in fp32 under bf16 autocast (the
fp32 position embedding is added to the patch embedding and the sum kept); diffusers' ``PatchEmbed`` casts the
sum back to the convolution's output dtype, so its stream is bf16. This runs our DiT both ways (the second by
patching that one line of ``DiT.forward``) at one configuration and prints, for each: the output's relative
error against the fp32 forward, and the live-tensor peak of a sampling and of a training step; and diffusers'
peaks beside them. CPU autocast, so the peaks indicate, they do not stand in for the GPU's::

    python tests/bench/dit_stream_ab.py [--batch 16] [--threads 2] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import inspect
import json
import textwrap
from pathlib import Path

import torch

from shared.engine.results import provenance
from shared.nn import transformer
from tools import bench

EMBED = "h = self.x_embedder(x).contiguous() + self.pos_embed"
EMBED_BF16 = "e = self.x_embedder(x).contiguous(); h = (e + self.pos_embed).to(e.dtype)"


def forward_with_cast_stream():
    src = textwrap.dedent(inspect.getsource(transformer.DiT.forward))
    if EMBED not in src:
        raise RuntimeError("DiT.forward no longer has the line this A/B patches; update EMBED")
    ns: dict = {}
    exec(src.replace(EMBED, EMBED_BF16), transformer.__dict__, ns)
    return ns["forward"]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="gpu", help="a bench DiT size (gpu = DiT-B/2)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="also write the figures (with provenance) as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rt = bench.Runtime(precision="bf16")
    case = bench.build_case("dit", args.size)
    case.config["batch"] = args.batch
    original, cast = transformer.DiT.forward, forward_with_cast_stream()

    def fresh(side_fn):
        torch.manual_seed(0)
        side = side_fn()
        for p in side.model.parameters():  # non-zero gates and final layer, so every block and the stream matter
            if p.dim() > 1:
                torch.nn.init.normal_(p, std=0.02)
        return side, case.batch()

    def peaks(side_fn) -> dict:
        """Live-tensor peak (MiB) of a sampling and of a training step, each on a fresh model."""
        row = {}
        for mode, make in (("sample", bench.make_sample_step), ("train", bench.make_train_step)):
            side, b = fresh(side_fn)
            step = make(side, b, rt)
            step()
            row[f"{mode}_peak_mib"] = bench.live_tensor_peak(step)["peak_bytes"] / 2**20
        return row

    out = {"config": case.config, "weights": "N(0, 0.02) on every matrix, seed 0", "autocast": "cpu bf16"}
    try:
        for name, fwd in (("ours_fp32_stream", original), ("ours_bf16_stream", cast)):
            side, b = fresh(case.ours)
            with torch.no_grad():
                transformer.DiT.forward = original
                ref = side.forward(side.model, b).float()
                transformer.DiT.forward = fwd
                with rt.autocast():
                    y = side.forward(side.model, b).float()
            out[name] = {"rel_error_vs_fp32": ((y - ref).norm() / ref.norm()).item(), **peaks(case.ours)}
            print(name, json.dumps(out[name]), flush=True)
    finally:
        transformer.DiT.forward = original
    out["diffusers"] = peaks(case.theirs)
    print("diffusers", json.dumps(out["diffusers"]))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({**out, **provenance()}, indent=2) + "\n")
        print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
