"""Positive pairs without labels: pair generators over a raw corpus (cropping, ICT, dropout views, title and BM25
pseudo-queries) and token augmentations. Pure numpy over pre-tokenised corpus tokens; knows nothing of models."""

from jdr.data.selfsup.augment import Augmentation, apply_augmentations, augment, parse_augmentations
from jdr.data.selfsup.pairs import CropPairs, DropoutPairs, PairGenerator, TitlePairs, chunk_documents
from jdr.data.selfsup.sentence_pairs import BM25Pairs, ICTPairs
from jdr.data.selfsup.sentences import split_sentences
from jdr.data.selfsup.tokens import CorpusTokens, SpecialTokens

__all__ = [
    "Augmentation",
    "BM25Pairs",
    "CorpusTokens",
    "CropPairs",
    "DropoutPairs",
    "ICTPairs",
    "PairGenerator",
    "SpecialTokens",
    "TitlePairs",
    "apply_augmentations",
    "augment",
    "chunk_documents",
    "parse_augmentations",
    "split_sentences",
]
