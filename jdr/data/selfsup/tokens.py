"""A raw corpus tokenised once for the pair generators: content tokens (no special tokens, never truncated), with
title, body and sentence boundaries, and the tokenizer's special tokens to wrap a view "as the tokenizer would".

Flat int32 tokens + int64 offsets, like `jdr.data.batching.PretokenizedTexts`, so cropping, sentence removal and
augmentation are slices and index arithmetic, not Python strings.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import numpy as np
from tokenizers import Tokenizer

from jdr.data.selfsup.sentences import split_sentences


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
    """What the tokenizer adds around one sequence (`prefix`, `suffix`: BERT `[CLS]` / `[SEP]`, RoBERTa `<s>` /
    `</s>`), its `mask_id` (None if it has no mask token), and the ids augmentations must never produce or
    touch (`special_ids`: every added special token). `vocab_size` counts added tokens."""

    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    mask_id: int | None
    special_ids: tuple[int, ...]
    vocab_size: int

    @classmethod
    def from_tokenizer(cls, tokenizer: Tokenizer) -> SpecialTokens:
        """Read them off `tokenizer`'s own post-processor (the template it applies to a single text)."""
        enc = _plain(tokenizer).encode("a")
        kinds = enc.special_tokens_mask
        if 0 not in kinds:
            raise ValueError("tokenizer: could not find the content token of a one-word text")
        first, last = kinds.index(0), len(kinds) - 1 - kinds[::-1].index(0)
        specials = {i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
        mask_id = next(
            (tokenizer.token_to_id(t) for t in ("[MASK]", "<mask>") if tokenizer.token_to_id(t) is not None), None
        )
        prefix, suffix = tuple(enc.ids[:first]), tuple(enc.ids[last + 1 :])
        specials |= set(prefix) | set(suffix)
        return cls(prefix, suffix, mask_id, tuple(sorted(specials)), tokenizer.get_vocab_size(with_added_tokens=True))

    def wrap(self, content: np.ndarray, max_length: int) -> np.ndarray:
        """`prefix + content[:budget] + suffix` as int32, `budget = max_length - len(prefix) - len(suffix)`."""
        budget = max_length - len(self.prefix) - len(self.suffix)
        if budget < 1:
            raise ValueError(f"max_length {max_length} leaves no room for content between the special tokens")
        return np.concatenate(
            [
                np.asarray(self.prefix, np.int32),
                np.asarray(content[:budget], np.int32),
                np.asarray(self.suffix, np.int32),
            ]
        )

    def budget(self, max_length: int) -> int:
        """Content tokens that fit in `max_length` with the special tokens."""
        return max_length - len(self.prefix) - len(self.suffix)


def _plain(tokenizer: Tokenizer) -> Tokenizer:
    """A copy without truncation or padding (the caller's object may truncate elsewhere)."""
    clone = Tokenizer.from_str(tokenizer.to_str())
    clone.no_truncation()
    clone.no_padding()
    return clone


@dataclasses.dataclass(frozen=True, eq=False)
class CorpusTokens:
    """Every document of a corpus as content tokens, tokenised once (special tokens excluded, nothing truncated).

    Document i: title tokens `titles[title_offsets[i]:title_offsets[i+1]]`, body tokens
    `body[body_offsets[i]:body_offsets[i+1]]`. Sentences (of the body, by `split_sentences`) are token ranges of
    `body`: sentence s is `body[sentence_offsets[s]:sentence_offsets[s+1]]`, and document i owns sentences
    `doc_sentences[i]:doc_sentences[i+1]`; `sentence_chars[s]` is its (start, end) in the document's text.
    `heading[s]` marks a structured-abstract heading ("METHODS"), which is never a query.
    """

    ids: tuple[str, ...]
    titles: np.ndarray  # [T] int32
    title_offsets: np.ndarray  # [N+1] int64
    body: np.ndarray  # [B] int32
    body_offsets: np.ndarray  # [N+1] int64
    sentence_offsets: np.ndarray  # [S+1] int64, positions in `body`
    doc_sentences: np.ndarray  # [N+1] int64
    sentence_chars: np.ndarray  # [S, 2] int64
    heading: np.ndarray  # [S] bool
    special: SpecialTokens

    @classmethod
    def from_texts(
        cls,
        tokenizer: Tokenizer,
        ids: Sequence[str],
        titles: Sequence[str],
        texts: Sequence[str],
        *,
        splitter: Callable[[str], list[tuple[int, int]]] = split_sentences,
        chunk: int = 4096,
    ) -> CorpusTokens:
        """Tokenise `titles` and `texts` (a BEIR corpus: `Corpus.ids`, `.titles`, `.texts`) in chunks of `chunk`
        documents. Sentence boundaries come from `splitter(text)` char spans, mapped onto the body's tokens by
        the tokenizer's char offsets, so the body is tokenised once, as one text (exact for BPE tokenizers too)."""
        if not len(ids) == len(titles) == len(texts):
            raise ValueError(f"{len(ids)} ids, {len(titles)} titles, {len(texts)} texts")
        tok = _plain(tokenizer)
        title_parts, body_parts, sent_offsets, sent_chars, heading = [], [], [], [], []
        title_len = np.zeros(len(ids), np.int64)
        body_len = np.zeros(len(ids), np.int64)
        n_sent = np.zeros(len(ids), np.int64)
        body_pos = 0
        for start in range(0, len(ids), chunk):
            stop = min(start + chunk, len(ids))
            t_enc = tok.encode_batch(list(titles[start:stop]), add_special_tokens=False)
            b_enc = tok.encode_batch(list(texts[start:stop]), add_special_tokens=False)
            for i, (te, be) in enumerate(zip(t_enc, b_enc)):
                text = texts[start + i]
                title_parts.append(np.asarray(te.ids, np.int32))
                title_len[start + i] = len(te.ids)
                body_parts.append(np.asarray(be.ids, np.int32))
                body_len[start + i] = len(be.ids)
                spans = splitter(text)
                token_starts = np.asarray([o[0] for o in be.offsets], np.int64)
                # Sentence s starts at the first token whose char start is >= the sentence's char start.
                bounds = np.searchsorted(token_starts, [s for s, _ in spans], side="left")
                keep = np.diff(np.append(bounds, len(token_starts))) > 0  # a span may hold no token (all stripped)
                for (s, e), b, k in zip(spans, bounds, keep):
                    if k:
                        sent_offsets.append(body_pos + b)
                        sent_chars.append((s, e))
                        heading.append(_is_heading(text[s:e]))
                n_sent[start + i] = int(keep.sum())
                body_pos += len(be.ids)
        sentence_offsets = np.asarray(sent_offsets + [body_pos], np.int64)
        # A body whose first sentence does not start at token 0 (leading characters the splitter trimmed) still
        # owns those tokens: they go with its first sentence.
        doc_sentences = _offsets(n_sent)
        body_offsets = _offsets(body_len)
        firsts = doc_sentences[:-1][n_sent > 0]
        sentence_offsets[firsts] = body_offsets[:-1][n_sent > 0]
        return cls(
            ids=tuple(ids),
            titles=np.concatenate(title_parts) if title_parts else np.zeros(0, np.int32),
            title_offsets=_offsets(title_len),
            body=np.concatenate(body_parts) if body_parts else np.zeros(0, np.int32),
            body_offsets=body_offsets,
            sentence_offsets=sentence_offsets,
            doc_sentences=doc_sentences,
            sentence_chars=np.asarray(sent_chars, np.int64).reshape(-1, 2),
            heading=np.asarray(heading, bool),
            special=SpecialTokens.from_tokenizer(tokenizer),
        )

    @classmethod
    def from_corpus(cls, tokenizer: Tokenizer, corpus, **kwargs) -> CorpusTokens:
        """`from_texts` over a `jdr.data.beir.Corpus`."""
        return cls.from_texts(tokenizer, corpus.ids, corpus.titles, corpus.texts, **kwargs)

    def __len__(self) -> int:
        return len(self.ids)

    @functools.cached_property
    def index(self) -> dict[str, int]:
        """Document id -> row."""
        return {d: i for i, d in enumerate(self.ids)}

    def title(self, i: int) -> np.ndarray:
        return self.titles[self.title_offsets[i] : self.title_offsets[i + 1]]

    def text(self, i: int) -> np.ndarray:
        return self.body[self.body_offsets[i] : self.body_offsets[i + 1]]

    def sentence(self, s: int) -> np.ndarray:
        return self.body[self.sentence_offsets[s] : self.sentence_offsets[s + 1]]

    def passage(self, i: int) -> np.ndarray:
        """Title then body: the BEIR passage (`title + " " + text`) as content tokens."""
        return np.concatenate([self.title(i), self.text(i)])

    @property
    def body_lengths(self) -> np.ndarray:
        return np.diff(self.body_offsets)

    @property
    def title_lengths(self) -> np.ndarray:
        return np.diff(self.title_offsets)

    @property
    def sentence_lengths(self) -> np.ndarray:
        return np.diff(self.sentence_offsets)


def _offsets(lengths: np.ndarray) -> np.ndarray:
    out = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=out[1:])
    return out


def _is_heading(sentence: str) -> bool:
    letters = [c for c in sentence if c.isalpha()]
    return bool(letters) and all(c.isupper() for c in letters) and len(sentence.split()) <= 5
