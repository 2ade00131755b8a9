"""The method layer's contract (shared/methods): the conditioning seam, the one sampling loop, sampler-config
validation, the safe rebuild of a module from a checkpoint and the loading of checkpoints written before the
method layer existed."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import nn

from shared.diffusion.schedules import DiscreteVP
from shared.methods.conditions import LabelCondition, PassThrough, TensorCondition
from shared.methods.diffusion_module import DiffusionModule
from shared.methods.registry import UnsafeCheckpointError, module_from_checkpoint
from shared.methods.sampling import SamplerConfigError
from shared.nn.unet import UNet

ROOT = Path(__file__).resolve().parents[1]


class ColourNet(nn.Module):
    """A toy denoiser conditioned on a colour (B, 3): its output is shifted by a linear map of the colour."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.colour = nn.Linear(3, 3)

    def forward(self, x, t, colour=None):
        out = self.conv(x)
        if colour is not None:
            out = out + self.colour(colour)[:, :, None, None]
        return out


def colour_module(drop_prob=0.0, **kw):
    torch.manual_seed(0)
    cond = TensorCondition("colour", drop_prob=drop_prob)
    kw = {"ema_decay": None, "sample_shape": (3, 4, 4), "sampler": {"name": "ddim", "steps": 4}, **kw}
    return DiffusionModule(ColourNet(), DiscreteVP(num_steps=20), conditions={"colour": cond}, **kw)


def test_a_new_condition_needs_no_override_of_the_loss_or_the_sampler():
    m = colour_module()
    x, colour = torch.randn(4, 3, 4, 4), torch.rand(4, 3)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    loss = m.training_loss({"x": x, "colour": colour}, g())
    assert loss.item() != m.training_loss({"x": x, "colour": colour * 0}, g()).item()
    loss.backward()
    assert m.net.colour.weight.grad.abs().sum() > 0           # the condition reached the network
    out = m.sample(cond={"colour": colour}, generator=g())
    assert out.shape == (4, 3, 4, 4)
    assert not torch.allclose(out, m.sample(cond={"colour": torch.zeros(4, 3)}, generator=g()))
    guided = m.sample(cond={"colour": colour}, sampler={"guidance_scale": 2.0}, generator=g())
    assert not torch.allclose(out, guided)


def test_condition_dropout_uses_its_own_probability_and_the_step_generator():
    m = colour_module(drop_prob=1.0)   # always dropped: the colour cannot matter
    x, colour = torch.randn(4, 3, 4, 4), torch.rand(4, 3)
    a = m.training_loss({"x": x, "colour": colour}, torch.Generator().manual_seed(0))
    b = m.training_loss({"x": x, "colour": torch.rand(4, 3)}, torch.Generator().manual_seed(0))
    assert a.item() == b.item()
    half = colour_module(drop_prob=0.5)
    kw = [half.condition({"colour": torch.ones(1000, 3)}, torch.Generator().manual_seed(s))["colour"]
          for s in (1, 1, 2)]
    assert torch.equal(kw[0], kw[1]) and not torch.equal(kw[0], kw[2])  # seeded by the generator alone
    assert 0.45 < float((kw[0] == 0).all(1).float().mean()) < 0.55


def test_guidance_at_scale_one_is_the_conditional_model_and_zero_the_null_condition():
    m = colour_module().eval()
    c = torch.rand(2, 3)
    x_T = torch.randn(2, 3, 4, 4)
    run = lambda cond, w: m.sample(x_T=x_T, cond=cond, sampler={"guidance_scale": w})  # noqa: E731
    assert torch.allclose(run({"colour": c}, 1.0), run({"colour": c}, 1.0))
    assert torch.allclose(run({"colour": c}, 0.0), run({"colour": torch.zeros(2, 3)}, 1.0), atol=1e-6)


def test_per_frame_guidance_ramp_on_videos():
    from shared.diffusion.guidance import guidance_weight

    like = torch.zeros(2, 1, 5, 3, 3)
    w = guidance_weight([1.0, 3.0], like)
    assert w.shape == (1, 1, 5, 1, 1) and torch.allclose(w.flatten(), torch.linspace(1, 3, 5))
    assert guidance_weight(2.0, like) == 2.0
    with pytest.raises(ValueError, match="3 values for 5 frames"):
        guidance_weight([1.0, 2.0, 3.0], like)


def test_sampler_config_errors_name_the_valid_options():
    m = colour_module()
    with pytest.raises(SamplerConfigError, match=r"unknown sampler 'ddimm'.*\['ddim', 'ddpm', 'euler', 'heun'\]"):
        m.sample(2, sampler={"name": "ddimm"})
    with pytest.raises(SamplerConfigError, match=r"unknown sampler option\(s\) \['stepz'\].*valid"):
        m.sample(2, sampler={"stepz": 3})
    for bad in ({"eta": -1.0}, {"eta": float("nan")}, {"steps": 0}, {"guidance_scale": float("inf")},
                {"guidance_scale": float("nan")}):
        with pytest.raises(SamplerConfigError, match="sampler."):
            m.sample(2, sampler=bad)
    # a default option of another sampler does not block a switch (ddim's eta is dropped for ddpm)
    cfg = colour_module(sampler={"name": "ddim", "steps": 4, "eta": 0.5}).sampler_config({"name": "ddpm"})
    assert "eta" not in cfg and cfg["name"] == "ddpm"


def test_unknown_or_missing_conditions_are_one_line_errors():
    m = colour_module()
    with pytest.raises(ValueError, match=r"unknown condition\(s\) \['color'\]; this module declares \['colour'\]"):
        m.sample(2, cond={"color": torch.rand(2, 3)})
    with pytest.raises(ValueError, match="the batch has no 'colour'"):
        m.training_loss({"x": torch.randn(2, 3, 4, 4)}, torch.Generator())
    with pytest.raises(ValueError, match="drop_prob must be in"):
        TensorCondition("colour", drop_prob=1.5)
    with pytest.raises(ValueError, match="ema_decay must be in"):
        colour_module(ema_decay=1.5)


def test_labels_are_declared_from_the_network_and_pass_through_is_never_guided():
    net = UNet(in_channels=1, base_channels=8, channel_mult=(1,), num_res_blocks=1, attention_resolutions=(),
               num_classes=3, norm_groups=4, image_size=4)
    m = DiffusionModule(net, DiscreteVP(num_steps=10), cond_drop_prob=0.1, ema_decay=None, sample_shape=(1, 4, 4),
                        conditions={"frame_is_video": PassThrough("frame_is_video")})
    assert list(m.conditions.keys()) == ["y", "frame_is_video"]
    assert isinstance(m.conditions["y"], LabelCondition) and m.conditions["y"].null_label == 3
    c, u = m.conditions.guidance_pair({"y": torch.tensor([0, 1]), "frame_is_video": torch.ones(2, 1)})
    assert torch.equal(u["y"], torch.tensor([3, 3])) and u["frame_is_video"] is c["frame_is_video"]


def test_labels_under_another_key_replace_the_default_label_condition():
    """A world's own label (e.g. StyledShapes' ``style``) declared as the network's ``y``: no second, default ``y``
    condition is added, and the network sees that key's labels."""
    net = UNet(in_channels=1, base_channels=8, channel_mult=(1,), num_res_blocks=1, attention_resolutions=(),
               num_classes=3, norm_groups=4, image_size=4)
    m = DiffusionModule(net, DiscreteVP(num_steps=10), ema_decay=None, sample_shape=(1, 4, 4),
                        conditions={"style": LabelCondition("style", drop_prob=0.5)})
    assert list(m.conditions.keys()) == ["style"]
    kw = m.condition({"style": torch.tensor([2, 0])}, drop=False)
    assert list(kw) == ["y"] and torch.equal(kw["y"], torch.tensor([2, 0]))


def test_latent_modules_encode_latent_conditions_like_x():
    from shared.diffusion.latent import LatentSpace
    from shared.methods.latent_module import latent_diffusion
    from shared.nn.autoencoder import AutoencoderKL

    torch.manual_seed(0)
    ae = AutoencoderKL(in_channels=3, block_out_channels=[8, 8], layers_per_block=1, latent_channels=3,
                       norm_num_groups=4)
    seen = {}

    class RefNet(ColourNet):
        def forward(self, x, t, ref=None):
            seen["ref"] = ref.shape
            return self.conv(x) + ref

    m = latent_diffusion(LatentSpace(ae, 1.0), base="shared.methods.diffusion_module.DiffusionModule",
                         net=RefNet(), schedule=DiscreteVP(num_steps=10), ema_decay=None,
                         conditions={"ref": TensorCondition("ref", latent=True)})
    m.training_loss({"x": torch.randn(2, 3, 8, 8), "ref": torch.randn(2, 3, 8, 8)}, torch.Generator())
    assert seen["ref"] == (2, 3, 4, 4)     # the 8x8 reference reached the net as a 4x4 latent


def legacy_checkpoint(tmp_path, target: str) -> Path:
    """A checkpoint as the code before the method layer wrote it: old class paths in the stored config."""
    run_config = {"module": {"_target_": target, "net": {"_target_": "shared.nn.unet.UNet", "in_channels": 1,
                                                         "base_channels": 8, "channel_mult": [1],
                                                         "num_res_blocks": 1, "attention_resolutions": [],
                                                         "norm_groups": 4, "image_size": 4},
                             "schedule": {"_target_": "shared.diffusion.schedules.DiscreteVP", "num_steps": 10},
                             "ema_decay": None, "sample_shape": [1, 4, 4],
                             "optimizer": {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3}}}
    from omegaconf import OmegaConf

    from shared.methods.registry import safe_instantiate

    module = safe_instantiate(OmegaConf.to_container(OmegaConf.create(run_config["module"])))
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": module.state_dict(), "run_config": run_config}, path)
    return path


def test_checkpoints_written_before_the_method_layer_keep_loading(tmp_path):
    m = module_from_checkpoint(legacy_checkpoint(tmp_path, "shared.engine.module.DiffusionModule"))
    assert type(m).__name__ == "DiffusionModule" and m.sample(1, sampler={"steps": 2}).shape == (1, 1, 4, 4)


@pytest.mark.parametrize("target", ["shutil.copyfile", "os.system", "torch.load", "builtins.exec",
                                    "shared.nn.weights.save_weights", "shared.engine.results.write_results"])
def test_a_checkpoint_cannot_name_code_outside_the_allow_list(tmp_path, target):
    path = legacy_checkpoint(tmp_path, "shared.methods.diffusion_module.DiffusionModule")
    ckpt = torch.load(path, weights_only=True)
    ckpt["run_config"]["module"]["net"] = {"_target_": target, "src": "/etc/passwd", "dst": str(tmp_path / "x")}
    torch.save(ckpt, path)
    with pytest.raises(UnsafeCheckpointError, match="refus"):
        module_from_checkpoint(path)
    assert not (tmp_path / "x").exists()


def test_a_checkpoint_cannot_smuggle_interpolations_or_a_foreign_latent_base(tmp_path):
    path = legacy_checkpoint(tmp_path, "shared.methods.diffusion_module.DiffusionModule")
    ckpt = torch.load(path, weights_only=True)
    ckpt["run_config"]["module"]["sample_shape"] = "${oc.env:HOME}"
    torch.save(ckpt, path)
    with pytest.raises(UnsafeCheckpointError, match="interpolation"):
        module_from_checkpoint(path)
    ckpt["run_config"]["module"] = {"_target_": "shared.methods.latent_module.latent_diffusion",
                                    "base": "subprocess.Popen", "latent": None}
    torch.save(ckpt, path)
    with pytest.raises(UnsafeCheckpointError, match="subprocess.Popen"):
        module_from_checkpoint(path)


LAYERS = {"shared/nn": ("shared.engine", "shared.methods", "tools", "papers"),
          "shared/data": ("shared.engine", "shared.methods", "tools", "papers"),
          "shared/diffusion": ("shared.engine", "shared.methods", "tools", "papers"),
          "shared/metrics": ("shared.engine", "shared.methods", "tools", "papers"),
          "shared/methods": ("shared.engine", "tools", "papers"),
          "shared/engine": ("tools", "papers")}


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_layers_import_downward_only(layer):
    """nn/data/diffusion/metrics know nothing of the method layer or the harness; the method layer knows no
    harness; the harness knows no paper and no tool (tools are not on a training run's import path)."""
    bad = []
    for f in (ROOT / layer).rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            bad += [f"{f.relative_to(ROOT)}: {n}" for n in names if n.startswith(LAYERS[layer])]
    assert not bad, bad


def test_papers_never_import_each_other():
    bad = []
    for f in (ROOT / "papers").rglob("*.py"):
        own = f.relative_to(ROOT / "papers").parts[0]
        for node in ast.walk(ast.parse(f.read_text())):
            mod = node.module if isinstance(node, ast.ImportFrom) else None
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [mod or ""]
            bad += [f"{f.relative_to(ROOT)}: {n}" for n in names
                    if n.startswith("papers.") and n.split(".")[1] != own]
    assert not bad, bad


def test_expected_checks_compare_per_seed_and_against_the_run_itself():
    from shared.engine.expectations import ExpectedError, evaluate_expected

    m = {"a": {"mean": 1.0, "per_seed": [1.0, 2.0]}, "b": {"mean": 3.0, "per_seed": [3.0, 3.0]},
         "fd": {"eta=0.0": {"10": 2.0}}, "best": "adaln_zero"}
    block = [{"metric": "a.per_seed", "op": "<", "than": "b.per_seed", "scale": 0.5},   # 1 < 1.5, 2 < 1.5: fails
             {"metric": "a", "op": "<", "than": "b"},                                     # means: 1 < 3
             {"metric": "fd.eta=0.0.10", "direction": "less_than", "value": 2.5},        # dotted keys, old spelling
             {"metric": "best", "op": "==", "value": "adaln_zero"},
             {"metric": "FID", "value": 3.17, "source": "paper scale: a reference, not a check"}]
    assert [r["passed"] for r in evaluate_expected(block, m)] == [False, True, True, True]
    with pytest.raises(ExpectedError, match="no metric 'c'"):
        evaluate_expected([{"metric": "c", "op": "<", "value": 1}], m)
    assert evaluate_expected([{"metric": "a", "op": "<", "value": float("nan")}], m)[0]["passed"] is False
