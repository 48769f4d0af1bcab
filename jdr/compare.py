"""Paired significance tests between retrieval runs (`jdr compare`): can these runs be told apart on these queries?

For every metric (NDCG@10, MRR@10, R@100, R@1000 by default) each run is compared with a baseline run over the
same judged queries:
- per-query values come from pytrec_eval through `jdr.evaluate.per_query_metrics`: every query of the qrels with a
  relevant document counts, and a judged query missing from a run scores 0 for that run (trec_eval's `-c`);
- paired randomization test of the mean difference (Fisher's; Smucker et al., CIKM 2007, recommend it for IR):
  `scipy.stats.permutation_test(permutation_type="samples")`, two-sided, which swaps the two runs' values within
  each query. It is exact (every one of the 2^n swaps) when 2^n <= `resamples`; otherwise it draws `resamples`
  random swaps from a seeded generator and reports (hits + 1) / (resamples + 1), never 0;
- paired t-test: `scipy.stats.ttest_rel`, and the 95 % confidence interval of the mean difference from it;
- 95 % confidence interval of each run's mean: the Student t interval (`scipy.stats.ttest_1samp`), the same
  model as the t-test (at n = 300 it is close to a bootstrap interval, and deterministic);
- multiple comparisons: the p-values of the chosen test (`test`) over the whole family of (run, metric) pairs
  compared with the baseline are adjusted by Holm-Bonferroni (default: controls the family-wise error, the usual
  bar for "significant" in an IR table) or Benjamini-Hochberg / -Yekutieli (`scipy.stats.false_discovery_control`,
  false discovery rate); a difference is significant when its adjusted p-value is below `alpha`.

Why scipy and not ranx: ranx (Bassani, ECIR 2022) has the same tests and fusion, but it pulls in numba and llvmlite
(a JIT compiler, ~150 MB, compile time on first use) to make large run files fast; here the runs are thousands of
queries at most, the statistics are three scipy calls that are already locked, maintained and documented, and the
fusion formulas (`jdr.fusion`) are a few lines each. scipy has no Holm correction; it is the 4-line step-down
formula below.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from scipy import stats

from jdr.errors import DataError
from jdr.evaluate import TEST_RUN, Qrels, Run, per_query_metrics, read_trec_run

METRICS = ("ndcg@10", "mrr@10", "recall@100", "recall@1000")
LABELS = {"ndcg@10": "NDCG@10", "mrr@10": "MRR@10", "recall@100": "R@100", "recall@1000": "R@1000", "map": "MAP"}
TESTS = ("permutation", "t")
CORRECTIONS = ("holm", "bh", "by", "none")
MARK = "†"


# -- statistics -----------------------------------------------------------------------------------------------
def mean_ci(x: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Student t confidence interval of the mean of `x[n]` (a zero-spread sample gives the point itself)."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) < 2 or np.all(x == x[0]):
        return float(x.mean()), float(x.mean())
    ci = stats.ttest_1samp(x, 0.0).confidence_interval(confidence)
    return float(ci.low), float(ci.high)


def paired_test(
    x: np.ndarray, y: np.ndarray, *, resamples: int = 10_000, seed: int = 0, confidence: float = 0.95
) -> dict[str, float | tuple[float, float]]:
    """Paired two-sided tests of `x[n]` (a run's per-query values) against `y[n]` (the baseline's, same queries).

    Returns `diff` (mean of x - y), `diff_ci` (t confidence interval of it), `p_permutation` (randomization test,
    exact when 2^n <= `resamples`, else Monte Carlo with `seed`) and `p_t` (paired t-test). Identical samples
    give p = 1; a constant non-zero difference gives a zero-width interval and the t-test's p = 0."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 2:
        raise ValueError(f"paired_test needs two 1-d samples of the same length >= 2, got {x.shape} and {y.shape}")
    d = x - y
    diff = float(d.mean())
    if np.all(d == 0):
        return {"diff": 0.0, "diff_ci": (0.0, 0.0), "p_permutation": 1.0, "p_t": 1.0}
    perm = stats.permutation_test(
        (x, y),
        _mean_difference,
        permutation_type="samples",
        vectorized=True,
        n_resamples=resamples,
        batch=1000,
        alternative="two-sided",
        rng=np.random.default_rng(seed),
    )
    if np.ptp(d) <= 1e-12 * max(1.0, abs(diff)):  # no spread (up to rounding): the t statistic is infinite
        return {"diff": diff, "diff_ci": (diff, diff), "p_permutation": float(perm.pvalue), "p_t": 0.0}
    t = stats.ttest_rel(x, y)
    ci = t.confidence_interval(confidence)
    return {
        "diff": diff,
        "diff_ci": (float(ci.low), float(ci.high)),
        "p_permutation": float(perm.pvalue),
        "p_t": float(t.pvalue),
    }


def _mean_difference(x, y, axis=-1):
    return np.mean(x - y, axis=axis)


def adjust_pvalues(p: Sequence[float], method: str = "holm") -> np.ndarray:
    """Multiple-comparison adjusted p-values of a family `p[m]`: "holm" (Holm-Bonferroni step-down, family-wise
    error), "bh" / "by" (Benjamini-Hochberg / -Yekutieli, false discovery rate, via scipy) or "none"."""
    p = np.asarray(p, dtype=np.float64)
    if method not in CORRECTIONS:
        raise ValueError(f"correction must be one of {list(CORRECTIONS)}, got {method!r}")
    if method == "none" or len(p) == 0:
        return p.copy()
    if method in ("bh", "by"):
        return stats.false_discovery_control(p, method=method)
    order = np.argsort(p, kind="stable")  # Holm: p_(i) * (m - i + 1), made monotone, capped at 1
    adjusted = np.minimum(1.0, np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order]))
    out = np.empty_like(p)
    out[order] = adjusted
    return out


# -- comparison of runs -----------------------------------------------------------------------------------------
@dataclasses.dataclass
class RunStats:
    """One run's line of a comparison: per metric `mean`, `ci` and, against the baseline, `diff`, `diff_ci`,
    `p_permutation`, `p_t`, `p_adjusted`, `significant` (absent for the baseline itself)."""

    name: str
    metrics: dict[str, dict]
    info: dict = dataclasses.field(default_factory=dict)  # source, queries in the run, missing / unjudged counts


@dataclasses.dataclass
class Comparison:
    """A baseline and the runs compared with it over `n_queries` judged queries, with the test settings."""

    baseline: str
    runs: list[RunStats]
    metrics: tuple[str, ...]
    n_queries: int
    settings: dict

    def to_dict(self) -> dict:
        """JSON-able: settings, `n_queries`, `baseline`, `metrics` and per run `name`, `info` and `metrics`."""
        return {
            **self.settings,
            "n_queries": self.n_queries,
            "baseline": self.baseline,
            "metrics": list(self.metrics),
            "runs": [dataclasses.asdict(r) for r in self.runs],
        }


def compare_scores(
    scores: Mapping[str, Mapping[str, np.ndarray]],
    *,
    baseline: str | None = None,
    metrics: Sequence[str] = METRICS,
    test: str = "permutation",
    correction: str = "holm",
    alpha: float = 0.05,
    confidence: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
    info: Mapping[str, dict] | None = None,
) -> Comparison:
    """Compare per-query values `scores[run][metric] -> [n]` (every run aligned on the same n queries) with the
    `baseline` run (default: the first). The family corrected by `correction` is every (run, metric) pair against
    the baseline, with the p-values of `test` ("permutation" or "t")."""
    names = list(scores)
    if len(names) < 2:
        raise ValueError("compare: give at least two runs")
    baseline = names[0] if baseline is None else baseline
    if baseline not in scores:
        raise ValueError(f"compare: baseline {baseline!r} is not one of the runs {names}")
    if test not in TESTS:
        raise ValueError(f"compare: test must be one of {list(TESTS)}, got {test!r}")
    if not 0 < alpha < 1 or not 0 < confidence < 1:
        raise ValueError("compare: alpha and confidence must lie in (0, 1)")
    n = len(scores[baseline][metrics[0]])
    runs = {name: RunStats(name, {}, dict((info or {}).get(name, {}))) for name in names}
    family = []
    for metric in metrics:
        base = np.asarray(scores[baseline][metric], dtype=np.float64)
        for name in names:
            x = np.asarray(scores[name][metric], dtype=np.float64)
            if x.shape != (n,):
                raise ValueError(f"compare: run {name!r} has {x.shape} values of {metric}, expected ({n},)")
            entry = {"mean": float(x.mean()), "ci": mean_ci(x, confidence)}
            if name != baseline:
                entry.update(paired_test(x, base, resamples=resamples, seed=seed, confidence=confidence))
                family.append(entry)
            runs[name].metrics[metric] = entry
    key = "p_permutation" if test == "permutation" else "p_t"
    for entry, p_adj in zip(family, adjust_pvalues([e[key] for e in family], correction)):
        entry["p_adjusted"] = float(p_adj)
        entry["significant"] = bool(p_adj < alpha)
    settings = {
        "test": test,
        "correction": correction,
        "alpha": alpha,
        "confidence": confidence,
        "resamples": resamples,
        "seed": seed,
        "comparisons": len(family),
        "exact_permutation": n < 64 and 2**n <= resamples,
    }
    return Comparison(baseline, [runs[name] for name in names], tuple(metrics), n, settings)


def compare_runs(
    qrels: Qrels,
    runs: Mapping[str, Run],
    *,
    ignore_identical_ids: bool = False,
    metrics: Sequence[str] = METRICS,
    info: Mapping[str, dict] | None = None,
    **kwargs,
) -> Comparison:
    """`compare_scores` of runs `{name: {qid: {docid: score}}}` against `qrels`: per-query values from pytrec_eval
    over the judged queries (a judged query missing from a run scores 0; unjudged run queries are ignored —
    both counted in each run's `info`). `kwargs` go to `compare_scores`."""
    scores, info = {}, {k: dict(v) for k, v in (info or {}).items()}
    judged = None
    for name, run in runs.items():
        per_query = per_query_metrics(qrels, run, ignore_identical_ids=ignore_identical_ids, metrics=tuple(metrics))
        judged = judged or list(per_query[metrics[0]])
        scores[name] = {m: np.array([per_query[m][q] for q in judged]) for m in metrics}
        info.setdefault(name, {}).update(
            queries_in_run=len(run),
            missing_queries=sum(1 for q in judged if not run.get(q)),
            unjudged_queries_ignored=sum(1 for q in run if q not in per_query[metrics[0]]),
        )
    return compare_scores(scores, metrics=metrics, info=info, **kwargs)


# -- run sources ------------------------------------------------------------------------------------------------
def run_path(source: str | Path) -> Path:
    """A TREC run file, or a `jdr train` workdir -> the `test_run.trec` its final test evaluation wrote."""
    path = Path(source)
    if path.is_dir():
        if not (path / TEST_RUN).is_file():
            raise DataError(
                path,
                f"a directory without {TEST_RUN}: give a TREC run file or a `jdr train` workdir "
                "whose final test evaluation has run",
            )
        return path / TEST_RUN
    return path


def run_name(source: str | Path) -> str:
    """Default display name of a run source: the workdir's name, else the file name without its extension."""
    path = Path(source)
    if path.is_dir() or path.name == TEST_RUN:
        return (path if path.is_dir() else path.parent).resolve().name
    return path.name.split(".")[0] or path.name


def load_run(source: str | Path, *, query_ids=None, doc_ids=None) -> Run:
    """Read the run of `source` (`run_path`), checking its ids against `query_ids` / `doc_ids` when given; a bad
    line (a non-UTF-8 byte included) is a one-line `DataError` naming file:line."""
    return read_trec_run(run_path(source), query_ids=query_ids, doc_ids=doc_ids)


def judgments(qrels_path: str | None = None, data: str | None = None, split: str = "test"):
    """Where `jdr compare` gets its judgments -> `(qrels, query_ids, doc_ids, ignore_identical_ids)`.

    `data` (a BEIR dir or name): the qrels of `split`, the dataset's query and corpus ids (runs are checked against
    them; queries of other splits are ignored)
    and BEIR's rule that a doc with the query's own id is ignored — as `jdr evaluate` scores. `qrels_path`: a BEIR
    TSV (`query-id corpus-id score`) or TREC qrels file (`qid 0 docid rel`), no id checks, trec_eval's rules."""
    from jdr.data.beir import load_beir, load_qrels, load_queries, resolve_dataset
    from jdr.data.msmarco import load_qrels_trec

    if (qrels_path is None) == (data is None):
        raise ValueError("compare: give exactly one of --qrels and --data")
    if data is not None:
        data_dir = resolve_dataset(data)
        beir = load_beir(data_dir, split)  # its queries are the split's; a run may hold every query of the dataset
        return beir.qrels, load_queries(data_dir / "queries.jsonl"), beir.corpus.index, True
    path = Path(qrels_path)
    if not path.is_file():
        raise DataError(path, "no such file")
    with open(path, "rb") as f:
        trec = len(f.readline().split()) == 4
    return (load_qrels_trec if trec else load_qrels)(path), None, None, False


# -- tables -----------------------------------------------------------------------------------------------------
def _test_sentence(c: Comparison) -> str:
    s = c.settings
    test = (
        "paired randomization test (" + ("exact" if s["exact_permutation"] else f"{s['resamples']} resamples") + ")"
        if s["test"] == "permutation"
        else "paired t-test"
    )
    corr = {
        "holm": "Holm-corrected",
        "bh": "Benjamini-Hochberg-corrected",
        "by": "Benjamini-Yekutieli-corrected",
        "none": "uncorrected",
    }[s["correction"]]
    return (
        f"two-sided {test}, {corr} over {s['comparisons']} comparisons (runs x metrics), p < {s['alpha']}; "
        f"{c.n_queries} judged queries, a query missing from a run scores 0"
    )


def format_markdown(
    c: Comparison,
    digits: int = 4,
    *,
    labels: Mapping[str, str] | None = None,
    extra: Mapping[str, Mapping[str, str]] | None = None,
) -> str:
    """A markdown table, one row per run, cells `mean` + `MARK` where the difference from the baseline is
    significant after correction; then a table of each run's difference from the baseline with its confidence
    interval (Student t, `paired_test`'s `diff_ci`); a footnote (the last line) names the test. `labels`: display
    names by run name; `extra`: more columns, `{header: {run name: cell}}` (a missing cell is empty)."""
    labels, extra = labels or {}, extra or {}
    lines = [
        "| run | " + " | ".join([LABELS.get(m, m) for m in c.metrics] + list(extra)) + " |",
        "|---|" + "---|" * (len(c.metrics) + len(extra)),
    ]
    for r in c.runs:
        label = labels.get(r.name, r.name) + (" (baseline)" if r.name == c.baseline else "")
        cells = [
            f"{r.metrics[m]['mean']:.{digits}f}" + (MARK if r.metrics[m].get("significant") else "") for m in c.metrics
        ] + [column.get(r.name, "") for column in extra.values()]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    base = labels.get(c.baseline, c.baseline)
    pct = f"{c.settings['confidence']:.0%}".replace("%", " %")
    lines += [
        "",
        f"| difference from {base} ({pct} CI) | " + " | ".join(LABELS.get(m, m) for m in c.metrics) + " |",
        "|---|" + "---|" * len(c.metrics),
    ]
    for r in c.runs:
        if r.name != c.baseline:
            cells = [
                f"{e['diff']:+.{digits}f} [{e['diff_ci'][0]:+.{digits}f}, {e['diff_ci'][1]:+.{digits}f}]"
                for e in (r.metrics[m] for m in c.metrics)
            ]
            lines.append(f"| {labels.get(r.name, r.name)} | " + " | ".join(cells) + " |")
    lines.append(f"\n{MARK} significantly different from {base}: {_test_sentence(c)}.")
    return "\n".join(lines)


def format_text(c: Comparison, digits: int = 4) -> str:
    """A plain table per metric: mean and its CI, difference from the baseline and its CI, raw and adjusted p."""
    pct = f"{c.settings['confidence']:.0%}"
    out = [f"baseline {c.baseline}; {_test_sentence(c)}; {MARK} = significant; {pct} CIs (Student t)"]
    for m in c.metrics:
        rows = [["run", "mean", f"{pct} CI", "diff", f"{pct} CI of diff", "p perm", "p t", "p adj", ""]]
        for r in c.runs:
            e = r.metrics[m]
            row = [r.name, f"{e['mean']:.{digits}f}", f"[{e['ci'][0]:.{digits}f}, {e['ci'][1]:.{digits}f}]"]
            if r.name == c.baseline:
                rows.append(row + ["baseline"] + [""] * 5)
                continue
            lo, hi = e["diff_ci"]
            rows.append(
                row
                + [
                    f"{e['diff']:+.{digits}f}",
                    f"[{lo:+.{digits}f}, {hi:+.{digits}f}]",
                    _p(e["p_permutation"]),
                    _p(e["p_t"]),
                    _p(e["p_adjusted"]),
                    MARK if e["significant"] else "",
                ]
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        out.append(f"\n{LABELS.get(m, m)}")
        out.extend(("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths))).rstrip() for row in rows)
    return "\n".join(out)


def _p(p: float) -> str:
    return f"{p:.4f}" if p >= 1e-4 or p == 0 else f"{p:.1e}"
