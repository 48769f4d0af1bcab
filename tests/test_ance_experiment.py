"""The ANCE experiment's configs and runner (benchmarks/ance_experiment.py): rows differ only in their negatives;
the runner picks checkpoints on dev, tests each row once, resumes, fuses, and marks significance. The `jdr`
subprocesses are replaced by a fake that writes what they would (the real ones: see the runner's smoke test in
its docstring), so this runs in seconds."""

import importlib.util
import json
from pathlib import Path

import pytest

from jdr.config import load_config, to_dict
from jdr.evaluate import TEST_RUN, write_trec_run

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "ance_exp"
ROWS = ("random", "bm25", "ance", "hybrid", "denoised", "ltre")
NEGATIVE_ROWS = ROWS[:-1]  # rows that differ only in their negatives section


def _runner():
    spec = importlib.util.spec_from_file_location("ance_experiment", REPO / "benchmarks" / "ance_experiment.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rows_differ_only_in_negatives():
    base = to_dict(load_config(CONFIGS / "base.py"))
    negatives = {}
    for row in NEGATIVE_ROWS:
        cfg = to_dict(load_config(CONFIGS / f"{row}.py"))
        negatives[row] = json.dumps(cfg.pop("negatives"), sort_keys=True)
        assert cfg == {k: v for k, v in base.items() if k != "negatives"}, row
    assert len(set(negatives.values())) == len(NEGATIVE_ROWS)
    assert base["model"]["passage_max_length"] == 128 and base["negatives"]["num"] == 3
    # LTRe replaces sampled negatives by retrieval over a fixed index: it also unties the towers, turns on its own
    # section and keeps passages at the test length (the index is built once; no passage is encoded in training)
    ltre = to_dict(load_config(CONFIGS / "ltre.py"))
    assert ltre.pop("ltre")["enabled"] and ltre["negatives"]["num"] == 0
    assert ltre["model"] == {**base["model"], "tied": False, "passage_max_length": 256}
    assert {k: v for k, v in ltre.items() if k not in ("negatives", "model")} == {
        k: v for k, v in base.items() if k not in ("negatives", "model", "ltre")
    }
    assert not base["eval"]["final_test"]  # the runner tests at 256 tokens


def _fake_jdr(calls, quality, qrels):
    """Stand-in for the runner's `jdr(cmd, log)`: records the command and writes the files the command would.
    A row's dev NDCG@10 is 0.5 + quality (bm25's drops 0.1 in its last epoch); its test run puts the relevant doc
    first (quality 1) or second (0) for every test query."""

    def jdr(cmd, log):
        calls.append(cmd)
        arg = dict(zip(cmd, cmd[1:]))
        if cmd[0] == "train":
            wd = Path(arg["--workdir"])
            wd.mkdir(parents=True, exist_ok=True)
            steps = int(next(c.split("=")[1] for c in cmd if c.startswith("--config.train.steps=")))
            row = wd.parent.name
            dev = {steps // 2: 0.5 + quality[row], steps: 0.5 + quality[row] - (0.1 if row == "bm25" else 0)}
            (wd / "metrics.jsonl").write_text(
                "".join(json.dumps({"step": s, "dev/ndcg@10": v}) + "\n" for s, v in dev.items())
            )
            (wd / "final_metrics.json").write_text(json.dumps({"step": steps}))
            return ""
        out = Path(arg.get("--run-output") or arg["--output"])
        name = out.parent.parent.name if out.parent.name.startswith("seed") else out.parent.name
        run = {}
        for q, docs in qrels.items():
            rel = next(iter(docs))
            other = "d0_0" if rel != "d0_0" else "d0_1"
            run[q] = {rel: 2.0, other: 1.0} if quality[name] else {rel: 1.0, other: 2.0}
        write_trec_run(out, run)
        return json.dumps({"ndcg@10": 0.5}) + "\n"

    return jdr


def test_runner_chooses_on_dev_resumes_fuses_and_marks(tmp_path, monkeypatch, capsys):
    from conftest import write_toy_beir

    from jdr.data.beir import load_beir

    data = write_toy_beir(tmp_path / "toy", n_test=24)
    runner = _runner()
    calls = []
    quality = {"random": 0, "bm25": 0, "ance": 1, "hybrid": 0, "denoised": 0, "ltre": 0, "sparse": 0, "released": 0}
    monkeypatch.setattr(runner, "jdr", _fake_jdr(calls, quality, load_beir(data, "test").qrels))
    args = [
        "--set",
        f"data.dataset={data}",
        "--set",
        "data.dev_queries=4",
        "--set",
        "train.global_batch_size=8",
        "--root",
        str(tmp_path / "runs"),
        "--out",
        str(tmp_path / "res"),
        "--released-model",
        "tiny",
    ]
    assert runner.main(args) == 0
    trains = [c for c in calls if c[0] == "train"]
    assert [Path(c[2]).stem for c in trains] == list(ROWS)
    ance = trains[2]
    assert "--config.train.steps=6" in ance and "--config.negatives.refresh_every=3" in ance  # 28 pairs / 8 = 3
    assert not any("refresh_every" in c for c in trains[0])
    tests = [c for c in calls if c[0] == "evaluate"]
    steps = {Path(c[2]).parent.name: c[c.index("--step") + 1] for c in tests if "--step" in c}
    assert steps["bm25"] == "3" and steps["ance"] == "6"  # bm25's dev peaked at epoch 1; ties -> the later step
    assert all(c[c.index("--max-length") + 1] == "256" for c in tests)
    md = (tmp_path / "res.md").read_text()
    assert "| ANCE (BM25 warm start, ANN every epoch) | 1.0000† | 1.0000† | 1.0000 | 1.0000 | 1.5000 | 6 |" in md
    assert "| BM25 negatives (baseline) | 0.6309 | 0.5000 |" in md
    assert (
        "| sparse BM25 + ance row (RRF, k 60) |" in md
        and "Fused: BM25 + the best dense row by dev NDCG@10 (ance)" in md
    )
    assert (tmp_path / "runs" / "fused_rrf" / "seed0" / TEST_RUN).is_file()
    record = json.loads((tmp_path / "res.json").read_text())
    assert record["best_dense"] == "ance" and record["comparison"]["baseline"] == "bm25"
    assert record["pending"] == [] and "Partial" not in md
    if importlib.util.find_spec("matplotlib"):  # benchmarks/requirements-bench.txt; not in CI's locks
        assert (tmp_path / "res.png").stat().st_size > 0 and "res.png" in md  # the dev curves
    else:  # without it the table is still written and does not point at a missing picture
        assert not (tmp_path / "res.png").exists() and "res.png" not in md
    sparse = next(c for c in calls if c[0] == "search")
    assert sparse[sparse.index("--bm25-preset") + 1] == "bm25s"  # the BM25 of the rows' negatives
    assert "| BM25 (bm25s), sparse |" in md
    calls.clear()
    capsys.readouterr()
    assert runner.main(args) == 0
    assert calls == []  # every row and both references were done: nothing reruns
    assert capsys.readouterr().out.count("done, skipped") == len(ROWS)


@pytest.mark.scifact
def test_plan_fits_the_budget(scifact_dir, capsys):
    runner = _runner()
    assert runner.main(["--plan", "--set", f"data.dataset={scifact_dir}"]) == 0
    out = capsys.readouterr().out
    assert "2 epochs = 50 steps (25 per epoch)" in out
    total = float(out.split("estimated total ~")[1].split(" min")[0])
    assert 80 <= total <= 125  # ~2 hours for every row alone on 2 cores at the reference costs


def test_an_interrupted_run_leaves_the_table_of_its_finished_rows(tmp_path, monkeypatch):
    from conftest import write_toy_beir

    from jdr.data.beir import load_beir

    data = write_toy_beir(tmp_path / "toy", n_test=24)
    runner = _runner()
    quality = {"random": 0, "bm25": 0, "ance": 1, "hybrid": 0, "denoised": 0, "ltre": 0, "sparse": 0, "released": 0}
    fake = _fake_jdr([], quality, load_beir(data, "test").qrels)

    def stop_at_hybrid(cmd, log):
        if cmd[0] == "train" and Path(cmd[2]).stem == "hybrid":
            raise KeyboardInterrupt  # the queue killed mid-row
        return fake(cmd, log)

    monkeypatch.setattr(runner, "jdr", stop_at_hybrid)
    args = ["--set", f"data.dataset={data}", "--set", "data.dev_queries=4", "--set", "train.global_batch_size=8"]
    args += ["--set", "negatives.bm25_preset=lucene", "--root", str(tmp_path / "runs"), "--out", str(tmp_path / "res")]
    with pytest.raises(KeyboardInterrupt):
        runner.main([*args, "--released-model", "none"])
    md = (tmp_path / "res.md").read_text()
    assert "**Partial: rows still to run: hybrid, denoised, ltre.**" in md
    assert "| ANCE (BM25 warm start, ANN every epoch) |" in md and "hybrid: 1 BM25" not in md
    assert "| BM25 (lucene), sparse |" in md  # --set reaches the sparse reference too
    assert json.loads((tmp_path / "res.json").read_text())["rows"] == ["random", "bm25", "ance"]
