"""Teacher scores that came with the training data: a `score` on every passage of Tevatron JSONL groups (`jdr score`
writes them; MS MARCO cross-encoder score sets come this way), read by the `jsonl` source when a distillation
objective asks for them, and handed to the train step with each group (`Example.scores`)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from jdr.errors import DataError


def score_value(path, line_no: int, where: str, value) -> float:
    """A passage's `score` as a float, or one DataError line naming file, line and passage (bool, text, NaN and
    infinity are not scores)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(path, f"{where}.score {value!r} is not a finite number", line_no)
    return float(value)


@dataclasses.dataclass
class TeacherScores:
    """`scores[qid][docid]`: the teacher's score of the pair; `lines[qid]`: the first line of the query's group
    in `path` (for messages)."""

    path: str
    scores: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    lines: dict[str, int] = dataclasses.field(default_factory=dict)

    def add(self, line_no: int, qid: str, key: str, passages: list) -> None:
        """Record the scores of one line's `key` list (positive_passages / negative_passages); a passage without
        `score` is left out (`check` names it if training would draw it)."""
        self.lines.setdefault(qid, line_no)
        row = self.scores.setdefault(qid, {})
        for i, p in enumerate(passages):
            if "score" in p:
                row[str(p["docid"])] = score_value(self.path, line_no, f"{key}[{i}]", p["score"])

    def of(self, qid: str, docids: Sequence[str]) -> tuple[float, ...]:
        """The scores of `qid`'s `docids`, in order."""
        row = self.scores.get(qid, {})
        try:
            return tuple(row[d] for d in docids)
        except KeyError as e:
            raise DataError(
                self.path, f"query {qid!r}: passage {e.args[0]!r} has no teacher 'score'", self.lines.get(qid)
            ) from None

    def check(self, qids: Sequence[str], qrels, negatives, corpus_ids: Sequence[str], num_negatives: int) -> None:
        """Every positive of every training query and each of its file negatives has a score, and each query has
        at least `num_negatives` scored negatives (a group is never topped up with an unscored random passage);
        else one DataError line naming the file and the query's line."""
        index = {q: i for i, q in enumerate(negatives.qids)} if negatives is not None else {}
        for qid in qids:
            positives = [d for d, r in qrels[qid].items() if r > 0]
            self.of(qid, positives)
            i = index.get(qid)
            rows = [] if i is None else negatives.rows[negatives.offsets[i] : negatives.offsets[i + 1]]
            self.of(qid, [corpus_ids[r] for r in rows])
            if len(rows) < num_negatives:
                raise DataError(
                    self.path,
                    f"query {qid!r} has {len(rows)} scored negatives, negatives.num is "
                    f"{num_negatives} (distillation never tops a group up with unscored passages)",
                    self.lines.get(qid),
                )
