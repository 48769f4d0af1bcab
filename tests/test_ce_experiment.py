"""configs/ce_exp/ and benchmarks/cross_encoder_experiment.py: every config loads and passes its objective's checks
with the runner's overrides, the distillation rows differ from the InfoNCE row only in the objective, and `--plan`
prints every step without running one."""

import importlib.util
from pathlib import Path

import pytest

from jdr.config import load_config, to_dict
from jdr.negatives.ce_denoise import check_config
from jdr.train.objectives import objective_class

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "ce_exp"
RUNNER_SETS = ["data.jsonl.path=groups.jsonl"]  # as benchmarks/cross_encoder_experiment.py sets them


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIGS.glob("*.py")))
def test_every_config_loads_and_passes_its_objective_checks(name):
    extra = ["negatives.ce_denoise_model=ce_workdir"] if name == "ance_ce_denoised" else []
    cfg = load_config(CONFIGS / f"{name}.py", RUNNER_SETS + extra)
    objective_class(cfg).validate(cfg, per_device=cfg.train.global_batch_size // 8)
    check_config(cfg.negatives)
    # sized for 2 cores: the bi-encoder rows 50 steps; the cross-encoder's fresh head needs 100 (50 stayed at chance)
    assert cfg.model.passage_max_length == 128 and cfg.train.steps == (100 if name == "cross_encoder" else 50)


def test_distillation_rows_differ_from_infonce_only_in_the_objective():
    base = to_dict(load_config(CONFIGS / "infonce.py"))
    for row in ("margin_mse", "kl"):
        cfg = to_dict(load_config(CONFIGS / f"{row}.py"))
        assert cfg["train"].pop("objective") == "distill" and cfg.pop("distill")["loss"] == row
        assert cfg["train"] == {k: v for k, v in base["train"].items() if k != "objective"}, row
        assert {k: v for k, v in cfg.items() if k != "train"} == {
            k: v for k, v in base.items() if k not in ("train", "distill")
        }, row
    ance, denoised = (to_dict(load_config(CONFIGS / f"{r}.py")) for r in ("ance", "ance_ce_denoised"))

    def plain(negatives):
        return {k: v for k, v in negatives.items() if not k.startswith("ce_denoise")}

    assert plain(denoised["negatives"]) == plain(ance["negatives"]) and denoised["negatives"]["ce_denoise_margin"] == 0
    assert {k: v for k, v in denoised.items() if k != "negatives"} == {
        k: v for k, v in ance.items() if k != "negatives"
    }


def test_plan_prints_every_step_and_runs_nothing(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        "cross_encoder_experiment", REPO / "benchmarks" / "cross_encoder_experiment.py"
    )
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    root = tmp_path / "root"
    assert runner.main(["--plan", "--root", str(root), "--configs", str(CONFIGS), "--dense-run", "dense.trec"]) == 0
    out = capsys.readouterr().out
    for step in ("jdr mine", "jdr rerank", "jdr score", "configs/ce_exp/cross_encoder.py", "estimated total"):
        assert step in out
    for row in runner.BI_ROWS:
        assert f"[{row}, ~" in out
    assert not root.exists()
