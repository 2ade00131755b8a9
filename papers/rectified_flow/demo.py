"""``make demo`` act for rectified flow (Liu et al., ICLR 2023, Fig. 2-3): reflow straightens the paths.

A 1-rectified flow is trained on the 2D eight-Gaussians toy, its ODE couples noise to data (reflow pairs,
RK45), and a 2-rectified flow is trained on those pairs from the 1-RF's weights — the claim pipeline's stages
(``shared.engine.stages.fit_stage``) at demo budget. The act plots both flows' Euler trajectories (the
crossing, curved 1-RF paths become straight) and reports the straightness ``S(Z)`` and the one-step sliced
Wasserstein distance to the target.
"""

from __future__ import annotations

from pathlib import Path

import torch

# demo budgets (steps of Adam on batches of 512 points); fast = the smoke test. At 500 steps the 1-RF had not yet
# learned the eight Gaussians (Euler-100 sliced Wasserstein 0.13, noise itself 0.31), so its reflow pairs barely
# moved and the 2-RF panel showed samples staying at their noise; 2500 steps reach 0.06-ish (about a minute).
BUDGET = {"base_steps": 2500, "reflow_steps": 1500, "n_pairs": 4096, "n_eval": 2000, "paths": 64}
FAST = {"base_steps": 10, "reflow_steps": 10, "n_pairs": 256, "n_eval": 256, "paths": 16}


def _compose(run_dir: Path, overrides=()):
    from omegaconf import open_dict

    from shared.engine.compose import compose

    cfg = compose(["experiment=rectified_flow/toy2d_claim", "pipeline=null", "trainer.enable_progress_bar=true",
                   *overrides])
    with open_dict(cfg):
        cfg.run_dir = str(run_dir)
    return cfg


def _plot(trajs: dict, target: torch.Tensor, path: Path) -> None:
    """The canonical picture of Fig. 2-3: every panel on the same axes, the target eight Gaussians drawn, the noise
    points, each flow's Euler paths and where they land — 1-RF's paths curve and cross, 2-RF's are straight."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = torch.cat([target, *[tr.reshape(-1, 2) for tr in trajs.values()]])
    lo, hi = pts.min(0).values - 0.3, pts.max(0).values + 0.3
    fig, axes = plt.subplots(1, len(trajs), figsize=(3.6 * len(trajs), 3.8), sharex=True, sharey=True)
    for ax, (title, tr) in zip(axes, trajs.items()):
        ax.scatter(target[:, 0], target[:, 1], s=2, color="tab:green", alpha=0.25, label="target (8 Gaussians)")
        for p in range(tr.shape[1]):
            ax.plot(tr[:, p, 0], tr[:, p, 1], lw=0.7, alpha=0.75, color="tab:blue")
        ax.scatter(tr[0, :, 0], tr[0, :, 1], s=6, color="black", label="noise X_0", zorder=3)
        ax.scatter(tr[-1, :, 0], tr[-1, :, 1], s=6, color="tab:red", label="sample (end of path)", zorder=3)
        ax.set_title(title, fontsize=9)
        ax.set_xlim(float(lo[0]), float(hi[0]))
        ax.set_ylim(float(lo[1]), float(hi[1]))
        ax.set_aspect("equal")
        ax.set_xticks([]), ax.set_yticks([])
    axes[0].legend(fontsize=7, loc="lower left", markerscale=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def demo_act(out: Path, fast: bool) -> list[tuple[str, str]]:
    from shared.data.toys import sample_toy
    from shared.diffusion.samplers import euler_sample
    from shared.engine.stages import fit_stage, pair_data, save_reflow_pairs
    from shared.metrics.sliced_wasserstein import sliced_wasserstein
    from shared.metrics.straightness import straightness

    b = FAST if fast else BUDGET
    cfg = _compose(out)
    g = torch.Generator().manual_seed(0)
    m1, w1 = fit_stage(cfg, "1rf", 0, b["base_steps"])
    noise = torch.randn(b["n_pairs"], 2, generator=g)
    pairs = out / "pairs_1rf.safetensors"
    save_reflow_pairs(m1, noise, pairs, rtol=1e-3, batch_size=b["n_pairs"])
    m2, _ = fit_stage(
        cfg,
        "2rf",
        0,
        b["reflow_steps"],
        {"data": pair_data(pairs, 512 if not fast else 64, 0), "module.init_from": str(w1)},
    )
    z = torch.randn(b["n_eval"], 2, generator=g)
    ref = sample_toy("eight_gaussians", b["n_eval"], seed=998)
    rows, trajs = [], {}
    for label, m in (("1-RF", m1), ("2-RF (reflow)", m2)):
        den = m.denoiser(True)
        with torch.no_grad():
            _, traj = euler_sample(den, z, m.schedule, 50, return_trajectory=True)
            one = euler_sample(den, z, m.schedule, 1)
        trajs[f"{label}: {'curved, crossing paths' if label == '1-RF' else 'straight paths'}"] = \
            torch.stack(traj)[:, : b["paths"]]
        rows.append((f"{label}: straightness S(Z)", f"{straightness(traj):.4f}"))
        rows.append((f"{label}: 1-step SW to data", f"{sliced_wasserstein(one, ref):.4f}"))
    _plot(trajs, ref[:2000], out / "trajectories.png")
    rows.append(("trajectories plot", str(out / "trajectories.png")))
    return rows
