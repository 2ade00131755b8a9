"""Every command the READMEs print works as printed (issue #19: documentation cannot rot).

Commands are extracted from ``README.md``, ``papers/*/README.md`` and ``docs/DATA_AND_WEIGHTS.md``: the lines of
bash code blocks (continuations joined, comments dropped) and inline ``python -m ...`` / ``make ...`` / ``pytest
...`` spans. Each is checked the cheapest way that still proves it works:

* ``python -m shared.engine.train|sample|evaluate|generate|edit ...`` — composed exactly as the entry point composes
  it (Hydra's parser and the config tree: an override of a key that does not exist, ``+key`` on a key that does,
  a missing group option all fail here), every value of a sweep; the plain-training, sample and evaluate forms
  are also *run* in quick mode, on a checkpoint this test trains in seconds (``<run>`` placeholders);
* ``python -m tools.*`` and ``python -m shared.metrics.train_*`` (judge re-training) — the tool's own argument
  parser accepts the arguments; ``tools.report --multirun`` runs
  on a sweep folder made here;
* ``make <target>`` — the target exists; its recipe's experiments compose (and run in quick mode in
  ``tests/test_engine.py``);
* ``pytest <files>`` — the files exist.

A command of any other form fails the test: add a rule here when a README gains a new kind of command. The
claim pipelines the READMEs name run in quick mode in the ``slow`` test at the end.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import shlex
from pathlib import Path

import pytest
from conftest import ROOT

DOCS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "papers").glob("*/README.md")),
        "docs/DATA_AND_WEIGHTS.md"]
ENTRY = {"shared.engine.train": "train", "shared.engine.sample": "sample", "shared.engine.evaluate": "evaluate",
         "shared.engine.generate": "generate", "shared.engine.edit": "edit"}
EXTERNAL = ("pytorch_fid", "http.server")   # other projects' commands the docs cite (not ours to test)


def _code_blocks(text: str):
    for m in re.finditer(r"```([a-z]*)\n(.*?)```", text, flags=re.S):
        if m.group(1) in ("", "bash", "sh", "shell"):
            yield m.group(2)


def _logical_lines(block: str):
    buf = ""
    for raw in block.splitlines():
        line = raw.rstrip()
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        yield (buf + line).strip()
        buf = ""
    if buf.strip():
        yield buf.strip()


def _strip_comment(line: str) -> str:
    """The command part of a line: shlex finds the first unquoted ``#``."""
    lex = shlex.shlex(line, posix=True, punctuation_chars=False)
    lex.whitespace_split, lex.commenters = True, "#"
    try:
        tokens = list(lex)
    except ValueError:
        return line
    return shlex.join(tokens) if tokens else ""


def extract(path: Path) -> list[str]:
    text = path.read_text()
    cmds = []
    for block in _code_blocks(text):
        for line in _logical_lines(block):
            if re.match(r"(python3? |make |pytest )", line):
                cmds.append(line)
    for m in re.finditer(r"`((?:python -m|make|pytest) [^`]+)`", text):
        cmds.append(m.group(1))
    return list(dict.fromkeys(cmds))


def _argv(cmd: str) -> list[str]:
    """Tokens of a command with ``[...]`` optional parts kept (brackets dropped) and comments removed."""
    cmd = _strip_comment(cmd)
    cmd = re.sub(r"\[(--[^\]]*)\]", r"\1", cmd)   # "[--metric <label> ...]" -> its content
    return [t for t in shlex.split(cmd) if t not in ("...",)]


ALL = [(doc, cmd) for doc in DOCS for cmd in extract(ROOT / doc)]


def test_the_docs_have_commands_and_the_extraction_finds_the_broken_forms_of_the_issue():
    cmds = [c for _, c in ALL]
    assert len(cmds) > 40
    assert "python -m shared.engine.sample ckpt=outputs/<run>/checkpoints/last.ckpt sampler.name=ddim " \
           "sampler.steps=10" in cmds
    assert any(c.startswith("make demo") for c in cmds) and any(c.startswith("make test") for c in cmds)
    first = (ROOT / "README.md").read_text().split("```bash\n", 1)[1].splitlines()
    assert first[0].startswith("make demo") and first[1].startswith("make test"), "the README starts the newcomer"


# --------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A checkpoint trained in seconds: what ``outputs/<run>`` means in the commands."""
    from shared.engine.compose import compose
    from shared.engine.run import fit

    run = tmp_path_factory.mktemp("readme_run")
    fit(compose(["data.size=8", "data.batch_size=16", "model.base_channels=8", "model.norm_groups=4",
                 "trainer.max_steps=3", "logger=none", "callbacks.samples=null", "trainer.enable_progress_bar=false",
                 f"run_dir={run}"]))
    return run


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    from shared.engine.results import write_results

    sweep = tmp_path_factory.mktemp("sweep")
    for j, v in enumerate((1, 2)):
        (sweep / str(j) / ".hydra").mkdir(parents=True)
        (sweep / str(j) / ".hydra" / "overrides.yaml").write_text(f"- claim.x={v}\n")
        write_results(sweep / str(j) / "results.json", {"a": float(v)},
                      config={"report": [{"label": "<label>", "metric": "a"}]})
    return sweep


def _substitute(cmd: str, run: Path, sweep: Path) -> str:
    """The placeholders of a printed command replaced: ``<run>`` by a run trained here, a sweep folder made here."""
    for name in ("outputs/<run>", "<ddpm run>", "<dit run>", "<run>"):
        cmd = cmd.replace(name, str(run))
    cmd = cmd.replace("outputs/multirun/<name>/<time>", str(sweep)).replace("<sweep folder>", str(sweep))
    return cmd.replace("<partition>", "debug")


# --------------------------------------------------------------------------------------------- checks
def _sweep_values(overrides: list[str]) -> list[list[str]]:
    """One override list per value of each swept key (the others at their first value)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    parsed = [parser.parse_overrides([o])[0] for o in overrides]
    first = [f"{p.get_key_element()}={next(iter(p.sweep_string_iterator()))}" if p.is_sweep_override() else o
             for p, o in zip(parsed, overrides)]
    variants = [first]
    for i, p in enumerate(parsed):
        if p.is_sweep_override():
            for v in list(p.sweep_string_iterator())[1:]:
                variants.append([*first[:i], f"{p.get_key_element()}={v}", *first[i + 1:]])
    return variants


def _compose_entry(entry: str, overrides: list[str]):
    from shared.engine.compose import compose

    overrides = [o for o in overrides if not o.startswith(("hydra.", "hydra/", "launcher="))
                 or o.startswith("launcher=")]
    cfgs = []
    for variant in _sweep_values(overrides):
        variant = [v for v in variant if not v.startswith(("hydra.", "hydra/"))]
        cfgs.append(compose(variant, config_name=entry))
    return cfgs


class _Parsed(Exception):
    pass


def _tool_accepts(module: str, args: list[str], monkeypatch) -> None:
    """``python -m <module> <args>``: its argparse parser accepts ``args`` (the tool is not run)."""
    real = argparse.ArgumentParser.parse_args

    def parse_and_stop(self, a=None, namespace=None):
        real(self, a, namespace)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_and_stop)
    monkeypatch.setattr("sys.argv", [module, *args])
    with pytest.raises(_Parsed):
        importlib.import_module(module).main(args)
    monkeypatch.undo()


def _make_targets() -> dict[str, str]:
    text = (ROOT / "Makefile").read_text()
    targets = {}
    for m in re.finditer(r"^([a-zA-Z0-9_-]+):[^\n]*\n((?:\t[^\n]*\n)*)", text, flags=re.M):
        targets[m.group(1)] = m.group(2)
    return targets


def check(cmd: str, run: Path, sweep: Path, monkeypatch, tmp_path) -> str:
    """Check one command; returns how (``composed``, ``ran``, ``parsed``, ``exists``)."""
    argv = _argv(_substitute(cmd, run, sweep))
    if not argv:
        return "comment"
    if argv[0] == "make":
        targets = _make_targets()
        target = argv[1]
        assert target in targets, f"`{cmd}`: no make target {target!r}"
        for exp in re.findall(r"experiment=([\w/]+)", targets[target]):
            _compose_entry("train", [f"experiment={exp}", "quick=true"])
        return "exists"
    if argv[0] == "pytest":
        for a in argv[1:]:
            if a.endswith(".py"):
                assert (ROOT / a).is_file(), f"`{cmd}`: no file {a}"
        return "exists"
    if argv[0] in ("python", "python3") and len(argv) > 2 and argv[1] == "-m":
        module, args = argv[2], argv[3:]
        if module.startswith(EXTERNAL):
            return "external"
        if module in ENTRY:
            overrides = [a for a in args if a not in ("-m", "--multirun")]
            cfgs = _compose_entry(ENTRY[module], overrides)
            if "-m" in args or "--multirun" in args:
                return "composed"
            return _run_entry(ENTRY[module], overrides, cfgs[0], run, tmp_path)
        if module == "tools.report" and "--multirun" in args:
            from tools.report import main

            main(args)
            return "ran"
        if re.fullmatch(r"papers\.\w+\.\w*probe", module):   # a development probe: its config composes
            assert importlib.util.find_spec(module), f"`{cmd}`: no module {module}"
            _compose_entry("train", [a for a in args if not a.startswith("run_dir=")])
            return "composed"
        if module.startswith("tools.") or re.fullmatch(r"shared\.metrics\.train_\w+", module):
            _tool_accepts(module, args, monkeypatch)   # judge re-training: the parser accepts the printed flags
            return "parsed"
    raise AssertionError(f"`{cmd}`: a command form this test does not know; add a rule to "
                         "tests/test_readme_commands.py")


def _run_entry(entry: str, overrides: list[str], cfg, run: Path, tmp_path) -> str:
    """Run the cheap entry points as printed (plus quick mode); claim pipelines and paper-scale configs only compose
    here (they run in quick mode in tests/test_engine.py and in the slow test below)."""
    from shared.engine.compose import compose

    if any(re.search(r"=(data|weights)/|/path/to", o) for o in overrides):
        return "composed"   # real datasets / released weights (docs/DATA_AND_WEIGHTS.md): not on a test machine
    if entry == "sample":
        from shared.engine.sample import draw

        cfg = compose([*overrides, "quick=true", f"out={tmp_path / 's.png'}"], config_name="sample")
        _, sampler, x = draw(cfg)
        assert x.shape[0] == cfg.n and sampler["name"] == (cfg.sampler.name or sampler["name"])
        return "ran"
    if entry == "evaluate":
        from shared.engine.evaluate import evaluate

        rec = evaluate(compose([*overrides, "quick=true", f"out={tmp_path / 'e.json'}"], config_name="evaluate"))
        assert "fd_judge" in rec["metrics"]
        return "ran"
    if entry == "train" and not cfg.get("pipeline") and "experiment" not in " ".join(overrides):
        from shared.engine.train import run as train_run

        # quick mode keeps what the user typed; the test's quick run drops the printed step budget
        rest = [o for o in overrides if not o.startswith(("ckpt_path=", "trainer.max_steps="))]
        base = [*rest, "quick=true", "logger=none", "trainer.enable_progress_bar=false",
                f"run_dir={tmp_path / 'plain'}"]
        train_run(compose(base))
        if any(o == "ckpt_path=last" for o in overrides):   # resume: the folder now has a last.ckpt
            train_run(compose([*base, "ckpt_path=last", "trainer.max_steps=6"]))
        return "ran"
    return "composed"


@pytest.mark.parametrize("doc", DOCS)
def test_every_command_of_the_doc_works_as_printed(doc, trained_run, sweep_dir, monkeypatch, tmp_path):
    how = {}
    for i, cmd in enumerate(extract(ROOT / doc)):
        how[cmd] = check(cmd, trained_run, sweep_dir, monkeypatch, tmp_path / str(i))
    assert how, f"{doc} prints no command"


def _claim_commands() -> list[str]:
    out = []
    for _, cmd in ALL:
        argv = _argv(cmd)
        if argv[:3] == ["python", "-m", "shared.engine.train"] and "-m" not in argv[3:] and \
                any(a.startswith("experiment=") and "claim" in a for a in argv):
            key = " ".join(a for a in argv[3:] if not a.startswith(("hydra.", "'claim.teacher_ckpt")))
            out.append(key)
    return sorted(set(out))


@pytest.mark.slow
@pytest.mark.parametrize("overrides", _claim_commands())
def test_printed_claim_commands_run_in_quick_mode(overrides, tmp_path):
    """Each claim command a README prints, with its own overrides, runs end to end in quick mode."""
    from shared.engine.compose import compose
    from shared.engine.train import run

    argv = [a for a in shlex.split(overrides) if not a.startswith("claim.teacher_ckpt")]
    cfg = compose([*argv, "quick=true", "logger=none", "trainer.enable_progress_bar=false", f"run_dir={tmp_path}"])
    if cfg.get("pipeline") and "publish" in (cfg.get("claim") or {}):
        cfg.claim.publish = False
    run(cfg)
    assert (tmp_path / "results.json").is_file()


@pytest.mark.parametrize("doc", [*DOCS, "docs/PERFORMANCE.md", "papers/README_few_step.md"])
def test_relative_links_of_the_docs_resolve(doc):
    path = ROOT / doc
    missing = []
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        if not (path.parent / target).exists():
            missing.append(target)
    assert not missing, f"{doc}: links to missing files {missing}"
