"""DiT claim checks at CPU scale (PAPERS.md, ``dit``), on the class-conditional 8x8 digits in pixel space.

* :func:`run_scaling` (``experiments/dit/digits_scaling.yaml``; the paper's Table 4 / Fig. 6): a grid of tiny
  DiTs,
  sizes x patch sizes, trained for the same steps with the same hyperparameters; FD_judge of class-conditional
  samples (no guidance, as Table 4) against held-out digits, plotted against the forward Gflops measured with
  ``shared.nn.flops`` (multiply-adds, the paper's convention). The paper's direction: FD falls as Gflops rise.
  Also the judge's class accuracy of samples with and without classifier-free guidance (Sec. 3.1 / Table 2).
* :func:`run_conditioning` (``experiments/dit/digits_conditioning.yaml``; Fig. 5): one size and patch, four
  block designs (adaLN-Zero, adaLN, cross-attention, in-context), FD_judge over training steps.

Protocol (all in ``cfg.claim``, fixed before any outcome was seen): ``seeds`` train seeds, each variant
trained
by ``shared.engine.run.fit`` (the code of ``python -m shared.engine.train``), ``num_samples`` samples with
labels
``i % 10`` drawn with ``sampler`` from the EMA weights, FD_judge against ``real_b``; the floor is FD_judge
between
the two real held-out halves.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from shared.data.digits import real_splits
from shared.engine.claims import finish, fit_variant, summarise, variant_config
from shared.engine.run import fit
from shared.engine.video_io import save_image_grid
from shared.metrics.judge import fd_judge, judge_accuracy
from shared.nn.flops import dit_inputs, gflops
from shared.nn.weights import save_weights


# ------------------------------------------------------------------ evaluation helpers
def draw(module, n: int, sampler: dict, seed: int, guidance_scale: float = 1.0, num_classes: int = 10):
    """``n`` class-conditional samples (labels ``i % num_classes``) from the EMA weights, seeded."""
    y = torch.arange(n) % num_classes
    g = torch.Generator().manual_seed(int(seed))
    was_training = module.training
    module.eval()
    x = module.sample(n, cond={"y": y}, sampler={**dict(sampler), "guidance_scale": float(guidance_scale)},
                      generator=g)
    module.train(was_training)
    return x, y


class GuidanceScores:
    """The judge's class accuracy and FD_judge of ``c.guidance_samples`` class-conditional samples at each of
    ``c.guidance_scales`` (per train seed the same noise at every scale), collected over seeds."""

    def __init__(self, c: DictConfig, reference: torch.Tensor):
        self.c, self.reference = c, reference
        self.acc = {f"w={float(w)}": [] for w in c.guidance_scales}
        self.fd = {f"w={float(w)}": [] for w in c.guidance_scales}

    def add(self, module, seed: int, grid_dir: Path | None = None, clamp: bool = False) -> None:
        c = self.c
        for w in c.guidance_scales:
            x, y = draw(module, int(c.guidance_samples), c.sampler, int(c.sample_seed) + int(seed), w)
            x = x.clamp(-1, 1) if clamp else x  # decoded latents are not bounded
            self.acc[f"w={float(w)}"].append(judge_accuracy(x, y))
            self.fd[f"w={float(w)}"].append(fd_judge(x, self.reference))
            if grid_dir is not None:
                save_image_grid(x[:100], Path(grid_dir) / f"samples_w{float(w)}.png", nrow=10, scale=2)

    def accuracy(self) -> dict:
        return {k: summarise(v) for k, v in self.acc.items()}

    def fd_judge(self) -> dict:
        return {k: summarise(v) for k, v in self.fd.items()}

    def accuracy_gain(self) -> dict:
        """Per seed: accuracy at the largest scale minus at the smallest (w = 1: no guidance)."""
        lo, hi = (f"w={float(f(self.c.guidance_scales))}" for f in (min, max))
        return summarise([b - a for a, b in zip(self.acc[lo], self.acc[hi])])


def net_gflops(module) -> dict:
    """Forward compute of one sample through the (non-EMA) network, counted on the meta device."""
    net = module.net
    return gflops(net, *dit_inputs(net), on_meta=True)


class FDCurve(pl.Callback):
    """FD_judge of EMA samples at the given training steps (the conditioning ablation's curves, Fig. 5)."""

    def __init__(self, steps, num_samples: int, sampler: dict, seed: int, reference: torch.Tensor):
        self.steps, self.n, self.sampler, self.seed, self.reference = (
            set(steps),
            num_samples,
            sampler,
            seed,
            reference,
        )
        self.fds: dict[int, float] = {}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        step = int(trainer.global_step)
        if step in self.steps and step not in self.fds:
            x, _ = draw(module, self.n, self.sampler, self.seed)
            self.fds[step] = fd_judge(x, self.reference)


def spearman(x, y) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def variant_overrides(size: dict, patch: int, conditioning: str | None = None) -> dict:
    out = {
        "model.depth": int(size["depth"]),
        "model.hidden_size": int(size["hidden_size"]),
        "model.num_heads": int(size["num_heads"]),
        "model.patch_size": int(patch),
    }
    if conditioning is not None:
        out["model.conditioning"] = conditioning
    return out


# ------------------------------------------------------------------ plots
def plot_scaling(path: Path, rows: list[dict], floor: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 3.4), dpi=100)
    for patch, marker in zip(sorted({r["patch"] for r in rows}, reverse=True), "osd^v"):
        pts = sorted((r for r in rows if r["patch"] == patch), key=lambda r: r["gmacs"])
        ax.errorbar(
            [r["gmacs"] for r in pts],
            [r["fd"]["mean"] for r in pts],
            yerr=[r["fd"]["std"] for r in pts],
            marker=marker,
            capsize=3,
            label=f"patch {patch}",
        )
        for r in pts:
            ax.annotate(
                r["name"],
                (r["gmacs"], r["fd"]["mean"]),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
            )
    ax.axhline(floor, color="grey", ls="--", lw=1, label="real vs real")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())   # only decade labels: minor ones overlap
    ax.set_xlabel("forward Gflops (multiply-adds)")
    ax.set_ylabel("FD_judge (lower is better)")
    ax.set_title("DiT on 8x8 digits: FD vs Gflops", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_curves(path: Path, curves: dict, floor: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 3.4), dpi=100)
    for name, pts in curves.items():
        steps = sorted(pts, key=int)
        ax.errorbar(
            [int(s) for s in steps],
            [pts[s]["mean"] for s in steps],
            yerr=[pts[s]["std"] for s in steps],
            marker="o",
            capsize=3,
            label=name,
        )
    ax.axhline(floor, color="grey", ls="--", lw=1, label="real vs real")
    ax.set_yscale("log")
    ax.set_xlabel("training steps")
    ax.set_ylabel("FD_judge (lower is better)")
    ax.set_title("DiT block designs on 8x8 digits", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ------------------------------------------------------------------ pipelines
def run_scaling(cfg: DictConfig) -> dict:
    t0 = time.time()
    c = cfg.claim
    if c.get("num_threads"):
        torch.set_num_threads(int(c.num_threads))
    real_a, real_b = real_splits(size=int(cfg.data.size))
    floor = fd_judge(real_a, real_b)
    metrics: dict = {
        "fd_judge_real_floor": floor,
        "fd_judge": {},
        "gflops": {},
        "gflops_2_per_mac": {},
        "params": {},
        "train_time_s": {},
    }
    rows, per_seed_fd = [], {}
    guided = GuidanceScores(c, real_b)
    for size_name, size in c.sizes.items():
        for patch in c.patches:
            name = f"{size_name}/{patch}"
            fds, times = [], []
            for seed in c.seeds:
                tag = f"{size_name}{patch}_seed{seed}"
                ts = time.time()
                module = fit_variant(cfg, tag, variant_overrides(size, patch), seed)
                times.append(time.time() - ts)
                x, _ = draw(module, int(c.num_samples), c.sampler, int(c.sample_seed) + int(seed))
                fds.append(fd_judge(x, real_b))
                if name == c.guidance_variant:
                    guided.add(module, seed)
                if seed == c.seeds[0] and name == c.guidance_variant:
                    save_image_grid(
                        x[:100], Path(cfg.run_dir) / f"samples_{size_name}{patch}.png", nrow=10, scale=2
                    )
            g = net_gflops(module)
            metrics["gflops"][name] = g["gmacs"]
            metrics["gflops_2_per_mac"][name] = g["gflops"]
            metrics["params"][name] = sum(p.numel() for p in module.net.parameters())
            metrics["fd_judge"][name] = summarise(fds)
            metrics["train_time_s"][name] = summarise(times)
            per_seed_fd[name] = fds
            rows.append(
                {"name": name, "patch": int(patch), "gmacs": g["gmacs"], "fd": metrics["fd_judge"][name]}
            )
    names = [r["name"] for r in rows]
    gm = [metrics["gflops"][n] for n in names]
    metrics["spearman_gflops_fd"] = spearman(gm, [metrics["fd_judge"][n]["mean"] for n in names])
    metrics["spearman_gflops_fd_per_seed"] = summarise(
        [spearman(gm, [per_seed_fd[n][i] for n in names]) for i in range(len(c.seeds))]
    )
    lo, hi = names[gm.index(min(gm))], names[gm.index(max(gm))]
    metrics["fd_ratio_most_to_least_gflops"] = summarise(
        [per_seed_fd[hi][i] / per_seed_fd[lo][i] for i in range(len(c.seeds))]
    )
    metrics["least_gflops_variant"], metrics["most_gflops_variant"] = lo, hi
    metrics["judge_accuracy"] = guided.accuracy()
    metrics["fd_judge_guided"] = guided.fd_judge()
    plot_scaling(Path(cfg.run_dir) / "fd_vs_gflops.png", rows, floor)
    return finish(
        cfg,
        metrics,
        paper="dit",
        claim=str(c.name),
        t0=t0,
        extra={
            "nfe": int(c.sampler.steps),
            "num_samples": int(c.num_samples),
            "guidance_variant": str(c.guidance_variant),
        },
    )


def run_guidance(cfg: DictConfig) -> dict:
    """Classifier-free guidance at one size trained longer (Sec. 3.1): the judge's class accuracy and FD_judge of
    class-conditional samples at each guidance scale, per seed."""
    t0 = time.time()
    c = cfg.claim
    if c.get("num_threads"):
        torch.set_num_threads(int(c.num_threads))
    real_a, real_b = real_splits(size=int(cfg.data.size))
    size_name, patch = str(c.variant).split("/")
    guided = GuidanceScores(c, real_b)
    times = []
    for seed in c.seeds:
        ts = time.time()
        module = fit_variant(cfg, f"{size_name}{patch}_seed{seed}", variant_overrides(c.sizes[size_name], patch), seed)
        times.append(time.time() - ts)
        guided.add(module, seed, grid_dir=Path(cfg.run_dir) if seed == c.seeds[0] else None)
    metrics = {"fd_judge_real_floor": fd_judge(real_a, real_b), "variant": str(c.variant),
               "judge_accuracy": guided.accuracy(), "fd_judge": guided.fd_judge(), "train_time_s": summarise(times),
               "accuracy_gain_max_vs_no_guidance": guided.accuracy_gain()}
    return finish(cfg, metrics, paper="dit", claim=str(c.name), t0=t0,
                  extra={"nfe": int(c.sampler.steps), "num_samples": int(c.guidance_samples)})


def run_latent(cfg: DictConfig) -> dict:
    """DiT as a *latent* diffusion model at CPU scale: per seed, a small KL autoencoder trained on the digits,
    then the DiT of ``cfg.model`` on its latents (``module`` = ``latent_diffusion`` with base ``DiTModule``);
    FD_judge of decoded samples without guidance, the judge's class accuracy and FD_judge at each guidance
    scale, and the autoencoder's own floor: FD_judge of reconstructions of ``real_a`` against ``real_b``."""
    t0 = time.time()
    c = cfg.claim
    if c.get("num_threads"):
        torch.set_num_threads(int(c.num_threads))
    real_a, real_b = real_splits(size=int(cfg.data.size))
    ae_cfg = OmegaConf.to_container(c.autoencoder_module, resolve=True)
    fds, rec_fds, rec_l1, scales, times = [], [], [], [], {"autoencoder": [], "dit": []}
    guided = GuidanceScores(c, real_b)
    for seed in c.seeds:
        ts = time.time()
        ae = fit_variant(cfg, f"autoencoder_seed{seed}",
                         {"module": ae_cfg, "trainer.max_steps": int(c.autoencoder_steps),
                          "data.batch_size": int(c.autoencoder_batch_size), "claim.autoencoder_module": None}, seed)
        times["autoencoder"].append(time.time() - ts)
        ae_file = save_weights(ae.net, Path(cfg.run_dir) / f"weights_seed{seed}" / "autoencoder.safetensors")
        with torch.no_grad():
            rec = ae.net.decode(ae.net.encode(real_a).mode()).clamp(-1, 1)
        rec_fds.append(fd_judge(rec, real_b))
        rec_l1.append(float((rec - real_a).abs().mean()))
        ts = time.time()
        module = fit_variant(cfg, f"dit_seed{seed}", {"module.latent.autoencoder.weights_path": str(ae_file),
                                                      "claim.autoencoder_module": None}, seed)
        times["dit"].append(time.time() - ts)
        scales.append(float(module.latent.scale_factor))
        x, _ = draw(module, int(c.num_samples), c.sampler, int(c.sample_seed) + int(seed))
        fds.append(fd_judge(x.clamp(-1, 1), real_b))
        guided.add(module, seed, grid_dir=Path(cfg.run_dir) if seed == c.seeds[0] else None, clamp=True)
    metrics = {
        "fd_judge_real_floor": fd_judge(real_a, real_b),
        "variant": str(c.variant),
        "fd_judge": summarise(fds),
        "fd_judge_reconstruction": summarise(rec_fds),
        "reconstruction_l1": summarise(rec_l1),
        "latent_scale_factor": summarise(scales),
        "judge_accuracy": guided.accuracy(),
        "fd_judge_guided": guided.fd_judge(),
        "accuracy_gain_max_vs_no_guidance": guided.accuracy_gain(),
        "gflops": net_gflops(module)["gmacs"],
        "params": sum(p.numel() for p in module.net.parameters()),
        "train_time_s": {k: summarise(v) for k, v in times.items()},
    }
    return finish(cfg, metrics, paper="dit", claim=str(c.name), t0=t0,
                  extra={"nfe": int(c.sampler.steps), "num_samples": int(c.num_samples)})


def run_conditioning(cfg: DictConfig) -> dict:
    t0 = time.time()
    c = cfg.claim
    if c.get("num_threads"):
        torch.set_num_threads(int(c.num_threads))
    real_a, real_b = real_splits(size=int(cfg.data.size))
    floor = fd_judge(real_a, real_b)
    max_steps = int(cfg.trainer.max_steps)
    metrics: dict = {
        "fd_judge_real_floor": floor,
        "fd_judge": {},
        "curve": {},
        "gflops": {},
        "params": {},
        "train_time_s": {},
    }
    per_seed = {}
    for cond in c.conditionings:
        finals, times, curve = [], [], {int(s): [] for s in c.curve_steps}
        for seed in c.seeds:
            cb = FDCurve(
                [s for s in c.curve_steps if int(s) < max_steps],
                int(c.curve_samples),
                c.sampler,
                int(c.sample_seed) + int(seed),
                real_b,
            )
            ts = time.time()
            sub_overrides = variant_overrides(c.size, c.patch, cond)
            sub = variant_config(cfg, sub_overrides, seed)
            module, _, _ = fit(sub, run_dir=Path(cfg.run_dir) / f"{cond}_seed{seed}", extra_callbacks=[cb])
            module.eval()
            times.append(time.time() - ts)
            x, _ = draw(module, int(c.num_samples), c.sampler, int(c.sample_seed) + int(seed))
            finals.append(fd_judge(x, real_b))
            for s, v in cb.fds.items():
                curve[s].append(v)
        curve[max_steps] = finals  # the last point is the main protocol's evaluation
        g = net_gflops(module)
        metrics["gflops"][cond] = g["gmacs"]
        metrics["params"][cond] = sum(p.numel() for p in module.net.parameters())
        metrics["fd_judge"][cond] = summarise(finals)
        metrics["curve"][cond] = {str(s): summarise(v) for s, v in sorted(curve.items()) if v}
        metrics["train_time_s"][cond] = summarise(times)
        per_seed[cond] = finals
    base = str(c.conditionings[0])
    metrics["fd_ratio_to_" + base] = {
        k: summarise([a / b for a, b in zip(v, per_seed[base])]) for k, v in per_seed.items() if k != base
    }
    metrics["best_conditioning"] = min(per_seed, key=lambda k: metrics["fd_judge"][k]["mean"])
    plot_curves(Path(cfg.run_dir) / "conditioning_curves.png", metrics["curve"], floor)
    return finish(
        cfg,
        metrics,
        paper="dit",
        claim=str(c.name),
        t0=t0,
        extra={"nfe": int(c.sampler.steps), "num_samples": int(c.num_samples)},
    )


def run_gflops(cfg: DictConfig) -> dict:
    """Table 4's Gflops column: forward compute of each ``conf/model/dit_<name>.yaml`` (one 256² image
    as 32x32x4 latents and one label), counted on the meta device; multiply-adds (the paper's unit) and
    2-per-MAC FLOPs."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from shared.engine.claims import PROJECT_ROOT

    t0 = time.time()
    metrics: dict = {"gmacs": {}, "gflops_2_per_mac": {}, "params_m": {}}
    for label, model_name in cfg.claim.models.items():
        model_cfg = OmegaConf.load(PROJECT_ROOT / "conf" / "model" / f"{model_name}.yaml")
        with torch.device("meta"):
            net = instantiate(model_cfg)
        g = gflops(net, *dit_inputs(net, device="meta"), on_meta=True)
        metrics["gmacs"][label] = round(g["gmacs"], 3)
        metrics["gflops_2_per_mac"][label] = round(g["gflops"], 3)
        metrics["params_m"][label] = round(sum(p.numel() for p in net.parameters()) / 1e6, 2)
    return finish(cfg, metrics, paper="dit", claim=str(cfg.claim.name), t0=t0)
