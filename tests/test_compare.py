"""`jdr compare`: paired tests and intervals against hand-computed values, the table / JSON / markdown outputs, and
one-line errors for bad runs."""

import json
import math

import numpy as np
import pytest

from jdr.cli import main
from jdr.compare import adjust_pvalues, compare_runs, compare_scores, format_markdown, mean_ci, paired_test
from jdr.evaluate import TEST_RUN, per_query_metrics, write_trec_run

T_975_DF2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)  # Student t quantile, df 2: (2a - 1) / sqrt(2a(1 - a)) = 4.3027


def test_permutation_exact_p_values():
    # n = 5 all-positive differences: only the identity and the all-flipped swap reach |mean|, p = 2 / 2^5.
    x, y = np.array([0.5, 0.3, 0.9, 0.2, 0.4]), np.zeros(5)
    assert paired_test(x, y)["p_permutation"] == pytest.approx(2 / 2**5)
    # d = (1, 1, 1, -1): sign flips reaching |sum| >= 2 are sum 4 (1 way) and sum 2 (4 ways), and their mirrors.
    assert paired_test(np.array([1.0, 1, 1, 0]), np.array([0.0, 0, 0, 1]))["p_permutation"] == pytest.approx(10 / 16)


def test_permutation_monte_carlo_is_seeded_and_never_zero():
    x, y = np.linspace(0.1, 1.0, 20), np.zeros(20)  # 2^20 swaps > resamples: Monte Carlo
    # no random swap reaches the observed (all-positive) mean: p = 2 (1 + 0) / (resamples + 1)
    assert paired_test(x, y, resamples=999)["p_permutation"] == pytest.approx(2 / 1000)
    rng = np.random.default_rng(1)
    a, b = rng.random(40), rng.random(40)
    p0, p0_again, p1 = (paired_test(a, b, resamples=2000, seed=s)["p_permutation"] for s in (0, 0, 1))
    assert p0 == p0_again and p0 != p1 and abs(p0 - p1) < 0.05


def test_t_test_and_intervals_by_hand():
    d = np.array([0.1, 0.2, 0.6])  # mean 0.3, sd sqrt(0.07), se sqrt(0.07 / 3)
    se = math.sqrt(0.07 / 3)
    t = 0.3 / se
    res = paired_test(d + 0.25, np.full(3, 0.25))
    assert res["diff"] == pytest.approx(0.3)
    assert res["p_t"] == pytest.approx(1 - t / math.sqrt(t * t + 2))  # Student t, df 2: P(|T| > t) in closed form
    assert res["diff_ci"] == pytest.approx((0.3 - T_975_DF2 * se, 0.3 + T_975_DF2 * se))
    assert mean_ci(d) == pytest.approx((0.3 - T_975_DF2 * se, 0.3 + T_975_DF2 * se))
    assert paired_test(d, d) == {"diff": 0.0, "diff_ci": (0.0, 0.0), "p_permutation": 1.0, "p_t": 1.0}
    constant = paired_test(d + 0.1, d)  # no spread in the differences: zero-width interval, t-test p = 0
    assert constant["diff_ci"] == pytest.approx((0.1, 0.1)) and constant["p_t"] == 0.0
    assert mean_ci(np.full(4, 0.5)) == (0.5, 0.5)


def test_corrections_by_hand():
    p = [0.01, 0.04, 0.03]
    # Holm: sorted 0.01*3, 0.03*2, 0.04*1 -> 0.03, 0.06, max(0.06, 0.04)
    assert adjust_pvalues(p, "holm") == pytest.approx([0.03, 0.06, 0.06])
    # Benjamini-Hochberg: 0.01*3/1, 0.03*3/2, 0.04*3/3 -> 0.03, 0.045, 0.04 -> running min from the top
    assert adjust_pvalues(p, "bh") == pytest.approx([0.03, 0.04, 0.04])
    assert adjust_pvalues(p, "none") == pytest.approx(p)
    assert adjust_pvalues([0.5, 0.9], "holm") == pytest.approx([1.0, 1.0])
    with pytest.raises(ValueError, match="correction must be one of"):
        adjust_pvalues(p, "bonferonni")


QRELS = {f"q{i}": {f"rel{i}": 1} for i in range(8)}
FIRST = {q: {f"rel{i}": 2.0, "other": 1.0} for i, q in enumerate(QRELS)}  # relevant doc at rank 1 everywhere
SECOND = {q: {"other": 2.0, f"rel{i}": 1.0} for i, q in enumerate(QRELS)}  # ... at rank 2 everywhere


def test_compare_runs_flags_and_missing_queries():
    missing = {q: docs for q, docs in FIRST.items() if q != "q7"}  # q7 missing: scores 0 there
    c = compare_runs(
        QRELS,
        {"second": SECOND, "first": FIRST, "missing": {**missing, "unjudged": {"x": 1.0}}},
        metrics=("ndcg@10", "mrr@10", "recall@100"),
    )
    assert c.baseline == "second" and c.n_queries == 8 and c.settings["comparisons"] == 6
    assert c.settings["exact_permutation"]
    first = c.runs[1].metrics
    assert first["mrr@10"]["mean"] == 1.0 and first["mrr@10"]["diff"] == pytest.approx(0.5)
    assert first["ndcg@10"]["diff"] == pytest.approx(1 - 1 / math.log2(3))
    # 8 all-positive differences: exact p = 2 / 2^8; Holm over 6: the two smallest (tied) both get 6 p
    assert first["mrr@10"]["p_permutation"] == pytest.approx(2 / 256)
    assert first["mrr@10"]["p_adjusted"] == pytest.approx(6 * 2 / 256) and first["mrr@10"]["significant"]
    assert first["recall@100"]["p_permutation"] == 1.0 and not first["recall@100"]["significant"]
    miss = c.runs[2]
    assert miss.metrics["mrr@10"]["mean"] == pytest.approx(7 / 8)
    assert miss.info == {"queries_in_run": 8, "missing_queries": 1, "unjudged_queries_ignored": 1}
    assert per_query_metrics(QRELS, missing)["mrr@10"]["q7"] == 0.0
    table = format_markdown(c).splitlines()
    assert table[0] == "| run | NDCG@10 | MRR@10 | R@100 |"
    assert table[2] == "| second (baseline) | 0.6309 | 0.5000 | 1.0000 |"
    assert table[3] == "| first | 1.0000† | 1.0000† | 1.0000 |"
    assert "Holm-corrected over 6 comparisons" in table[-1]
    lo, hi = first["ndcg@10"]["diff_ci"]
    assert table[6] == "| difference from second (95 % CI) | NDCG@10 | MRR@10 | R@100 |"
    assert table[8].startswith(f"| first | {first['ndcg@10']['diff']:+.4f} [{lo:+.4f}, {hi:+.4f}] | ")
    assert (
        table[9]
        == "| missing | "
        + " | ".join(
            f"{e['diff']:+.4f} [{e['diff_ci'][0]:+.4f}, {e['diff_ci'][1]:+.4f}]"
            for e in (miss.metrics[m] for m in ("ndcg@10", "mrr@10", "recall@100"))
        )
        + " |"
    )
    with pytest.raises(ValueError, match="baseline 'nope' is not one of"):
        compare_scores(
            {"a": {"ndcg@10": np.ones(3)}, "b": {"ndcg@10": np.ones(3)}}, baseline="nope", metrics=("ndcg@10",)
        )


@pytest.fixture()
def runs(tmp_path):
    (tmp_path / "qrels.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q, docs in QRELS.items() for d in docs)
    )
    for name, run in (("second", SECOND), ("first", FIRST)):
        write_trec_run(tmp_path / f"{name}.trec", run)
    return tmp_path


def test_cli_json_markdown_text(runs, capsys):
    args = ["compare", "--qrels", str(runs / "qrels.tsv"), str(runs / "second.trec"), str(runs / "first.trec")]
    assert main(args + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {
        "qrels",
        "test",
        "correction",
        "alpha",
        "confidence",
        "resamples",
        "seed",
        "comparisons",
        "n_queries",
        "baseline",
        "metrics",
        "runs",
    } <= set(out)
    assert out["baseline"] == "second" and out["n_queries"] == 8 and out["metrics"][0] == "ndcg@10"
    base, first = out["runs"]
    assert base["name"] == "second" and set(base["metrics"]["ndcg@10"]) == {"mean", "ci"}
    assert set(first["metrics"]["mrr@10"]) == {
        "mean",
        "ci",
        "diff",
        "diff_ci",
        "p_permutation",
        "p_t",
        "p_adjusted",
        "significant",
    }
    assert first["info"]["source"] == str(runs / "first.trec") and first["info"]["missing_queries"] == 0
    assert main(args + ["--markdown", "--baseline", "first", "--correction", "bh", "--test", "t"]) == 0
    md = capsys.readouterr().out
    assert "| first (baseline) |" in md and "| second | 0.6309† | 0.5000† |" in md and "paired t-test" in md
    assert (
        "| difference from first (95 % CI) | NDCG@10 | MRR@10 |" in md
        and "| second | -0.3691 [-0.3691, -0.3691] |" in md
    )
    assert main(args + ["--names", "B,A", "--metrics", "mrr@10"]) == 0
    text = capsys.readouterr().out
    assert "MRR@10" in text and "NDCG@10" not in text and "  A  " in text


def test_cli_trec_qrels_and_workdir_input(runs, capsys):
    (runs / "qrels.trec").write_text("".join(f"{q} 0 {d} 1\n" for q, docs in QRELS.items() for d in docs))
    workdir = runs / "my_run"
    workdir.mkdir()
    (runs / "first.trec").rename(workdir / TEST_RUN)
    assert (
        main(["compare", "--qrels", str(runs / "qrels.trec"), str(runs / "second.trec"), str(workdir), "--json"]) == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in out["runs"]] == ["second", "my_run"]
    assert out["runs"][1]["metrics"]["mrr@10"]["mean"] == 1.0


def _error(capsys, args) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err.strip()


def test_cli_errors_name_file_and_line(runs, toy_beir, capsys):
    qrels = ["--qrels", str(runs / "qrels.tsv")]
    ok = str(runs / "second.trec")
    bad = runs / "bad.trec"
    bad.write_text("q0 Q0 rel0 1 2.0 t\nq0 Q0 other 2\n")
    assert (
        _error(capsys, ["compare", *qrels, ok, str(bad)]) == f"jdr: error: {bad}:2: expected 6 columns "
        "(qid Q0 docid rank score tag), got 4"
    )
    bad.write_bytes(b"q0 Q0 rel0 1 2.0 t\nq0 Q0 \xff 2 1.0 t\n")
    assert _error(capsys, ["compare", *qrels, ok, str(bad)]).startswith(f"jdr: error: {bad}:2: not UTF-8")
    # a query of another split (q0 is a train query) is known and ignored; an unknown one is an error
    bad.write_text("q0 Q0 d0_0 1 2.0 t\nzzz Q0 d0_0 1 2.0 t\n")
    data = ["--data", str(toy_beir), "--split", "test"]
    assert (
        _error(capsys, ["compare", *data, str(bad), str(bad), "--names", "a,b"])
        == f"jdr: error: {bad}:2: query id 'zzz' is not in the queries"
    )
    bad.write_text("q35 Q0 nodoc 1 2.0 t\n")
    assert (
        _error(capsys, ["compare", *data, str(bad), str(bad), "--names", "a,b"])
        == f"jdr: error: {bad}:1: doc id 'nodoc' is not in the corpus"
    )
    assert "run names ['second', 'second'] repeat" in _error(capsys, ["compare", *qrels, ok, ok])
    assert f"{runs}: a directory without {TEST_RUN}" in _error(capsys, ["compare", *qrels, ok, str(runs)])
    assert "baseline 'x' is not one of" in _error(
        capsys, ["compare", *qrels, ok, str(runs / "first.trec"), "--baseline", "x"]
    )
    assert "unknown metric(s) ['ndcg@5']" in _error(
        capsys, ["compare", *qrels, ok, str(runs / "first.trec"), "--metrics", "ndcg@5"]
    )


@pytest.mark.slow  # one tiny `jdr train` (compile-bound: ~45 s alone, ~110 s on a loaded 2-core machine)
def test_train_workdir_writes_its_test_run(tiny_model, toy_beir, tmp_path, capsys, monkeypatch):
    """The end-of-run test evaluation leaves test_run.trec in the workdir; `jdr compare` scores it exactly as the
    run's own final metrics. The evaluation cuts passages at eval.passage_max_length, not the training length."""
    from jdr.config import load_config
    from jdr.train import hooks
    from jdr.train.trainer import train

    lengths, real_evaluate_model = [], hooks.evaluate_model

    def recording_evaluate_model(*args, **kwargs):
        lengths.append(kwargs.get("passage_max_length"))
        return real_evaluate_model(*args, **kwargs)

    monkeypatch.setattr(hooks, "evaluate_model", recording_evaluate_model)
    cfg = load_config(
        "configs/tiny.py",
        [
            f"model.path={tiny_model}",
            f"data.dataset={toy_beir}",
            "train.steps=2",
            "eval.every=0",
            "checkpoint.every=0",
            "export.at_end=false",
            "data.dev_queries=0",
            "eval.passage_max_length=24",
        ],
    )
    assert cfg.model.passage_max_length != 24
    final = train(cfg, tmp_path / "run", progress=False)
    assert lengths == [24]
    assert (tmp_path / "run" / TEST_RUN).is_file()
    capsys.readouterr()
    assert (
        main(
            [
                "compare",
                "--data",
                str(toy_beir),
                "--split",
                "test",
                str(tmp_path / "run"),
                str(tmp_path / "run" / TEST_RUN),
                "--names",
                "a,b",
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    for metric in ("ndcg@10", "mrr@10", "recall@100"):
        assert out["runs"][0]["metrics"][metric]["mean"] == pytest.approx(final[f"test/{metric}"], abs=1e-5)
    assert out["runs"][1]["metrics"]["ndcg@10"]["p_permutation"] == 1.0
