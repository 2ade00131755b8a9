"""The CPU instruction-set pin (shared/__init__.py, shared.engine.isa): ``import shared`` makes torch compute with
AVX2 code on every x86-64 host, so evidence made on an AVX-512 host and on an AVX2 host is the same bit for bit;
publishing refuses a process that does not compute with the pin; results record what was used."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PIN_VARS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR", "VDP_CPU_ISA")


def _has_avx2() -> bool:
    try:
        return " avx2" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


x86_avx2 = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64") or not _has_avx2(),
                              reason="the pin applies to x86-64 hosts with AVX2")


def _python(code: str, **env) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in PIN_VARS}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**clean, "PYTHONPATH": str(ROOT), **env},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


CAPABILITY = "import torch; print(torch.backends.cpu.get_cpu_capability())"
# one conv + one matmul step whose bits depend on the kernels' instruction set (oneDNN, MKL and ATen all run)
DIGEST = ("import hashlib, torch; torch.set_num_threads(1); g = torch.Generator().manual_seed(0); "
          "x = torch.randn(8, 16, 16, 16, generator=g); w = torch.randn(32, 16, 3, 3, generator=g); "
          "y = torch.nn.functional.conv2d(x, w, padding=1); z = y.flatten(1) @ torch.randn(8192, 64, generator=g); "
          "z = torch.nn.functional.gelu(torch.nn.functional.group_norm(z.view(8, 8, 8), 4)); "
          "print(hashlib.sha256(z.numpy().tobytes()).hexdigest()[:16])")


@x86_avx2
def test_import_shared_pins_avx2_and_native_opts_out():
    assert _python("import shared; " + CAPABILITY) == "AVX2"
    native = _python(CAPABILITY)                                  # torch's own choice on this processor
    assert _python("import shared; " + CAPABILITY, VDP_CPU_ISA="native") == native
    # the pin is the same computation as asking torch for AVX2 by hand (whatever this processor offers)
    by_hand = _python(DIGEST, ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2", MKL_CBWR="AVX2")
    assert _python("import shared; " + DIGEST) == by_hand


@x86_avx2
def test_the_test_process_is_pinned_and_results_record_it():
    from shared.engine.isa import isa_problem, isa_state
    from shared.engine.results import compute_resources

    assert isa_problem() is None, isa_problem()
    assert isa_state() == {"cpu_capability": "AVX2", "isa_pin": "avx2"}
    res = compute_resources()
    assert res["cpu_capability"] == "AVX2" and res["isa_pin"] == "avx2"


@x86_avx2
def test_isa_problem_names_the_cause(monkeypatch):
    from shared.engine.isa import isa_problem

    monkeypatch.setenv("VDP_CPU_ISA", "avx512")
    assert "VDP_CPU_ISA='avx512'" in isa_problem() and "avx2" in isa_problem()
    monkeypatch.setenv("VDP_CPU_ISA", "native")
    assert isa_problem().startswith("VDP_CPU_ISA=native")
    monkeypatch.delenv("VDP_CPU_ISA")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE")
    msg = isa_problem()
    assert "AVX512_CORE" in msg and "\n" not in msg
    # a process where a torch kernel ran before `import shared`: its capability is not the pin
    out = _python("import torch; torch.ones(2).sum(); import shared; from shared.engine.isa import isa_problem; "
                  "print(isa_problem())")
    native = _python(CAPABILITY)
    assert out == "None" if native == "AVX2" else "ran before `import shared`" in out


@x86_avx2
def test_publishing_refuses_an_unpinned_process(tmp_path, monkeypatch):
    from conftest import compose

    import shared.engine.claims as claims
    from shared.engine.run import ConfigError

    monkeypatch.setattr(claims, "PROJECT_ROOT", tmp_path / "project")
    cfg = compose(["experiment=ddpm/digits_claim", "++claim.publish=true", f"run_dir={tmp_path / 'run'}"])
    monkeypatch.setenv("VDP_CPU_ISA", "native")
    with pytest.raises(ConfigError, match="publish=true refused: VDP_CPU_ISA=native"):
        claims.check_publish(cfg, "ddpm/digits_claim")
    monkeypatch.delenv("VDP_CPU_ISA")
    claims.check_publish(cfg, "ddpm/digits_claim")   # pinned: approved


def test_readme_counts_the_long_tier_records_made_under_the_pin():
    """The README's Guarantees state how many long-tier records (``claim.tier: long``) were published under the pin
    (their ``compute.cpu_capability`` is recorded) and name those that were not; both follow the committed JSON."""
    import json
    import re

    pinned, unpinned = [], []
    for path in sorted((ROOT / "papers").glob("*/results/*.json")):
        record = json.loads(path.read_text())
        if ((record.get("config") or {}).get("claim") or {}).get("tier") != "long":
            continue
        name = f"{path.parent.parent.name}/{path.stem}"
        (pinned if (record.get("compute") or {}).get("cpu_capability") else unpinned).append(name)
    text = " ".join((ROOT / "README.md").read_text().split())
    m = re.search(r"Of the (\d+) long-tier records \(`make claims-long`\), (\d+) carry pinned evidence", text)
    assert m, "README Guarantees: the sentence counting the long tier's pinned records is missing"
    assert (int(m.group(1)), int(m.group(2))) == (len(pinned) + len(unpinned), len(pinned)), (m.group(0), unpinned)
    if unpinned:
        listed = re.search(r"predate the pin \(no `compute\.cpu_capability`\): ([^.]*)\.", text)
        assert listed, "README Guarantees: the long-tier records that predate the pin are not named"
        assert sorted(re.findall(r"`([a-z0-9_]+/[a-z0-9_]+)`", listed.group(1))) == sorted(unpinned)
