"""Memory negatives on SciFact (benchmarks/memory_negatives.py): the shared base of the rows; one overlay per row.

MoMA mines hard negatives from a mixture of memories: the training corpus plus large augmentation corpora (Ge et
al. 2023: MS MARCO + Wikipedia + medical abstracts for zero-shot BEIR). The real augmentation corpus for SciFact
would be biomedical abstracts (PubMed / S2ORC; TREC-COVID's CORD-19, NFCorpus, BioASQ in BEIR), and none is
available offline here. This experiment is therefore a SIMULATION built from SciFact alone
(`benchmarks/memory_negatives.py` writes it): SciFact's corpus is split, seeded, into a TRAINING PART (every
document judged relevant to a training query + half of the others) that the rows train on as their corpus, and an
AUGMENTATION PART (the other half, disjoint) encoded once by all-MiniLM-L6-v2 into the memory `aug`. Every row is
tested once on the FULL SciFact corpus. Rows differ only in where their negatives come from:
  half    the training part alone (`aug` loaded, given no quota)            -> fewer negative texts
  merged  one ranking over training part + `aug` (MoMA's merged mixture)     -> the same texts as `full`, half of
                                                                                them in a fixed (stale) memory
  quota   100 candidates from each
  full    the full SciFact corpus as the training corpus (`aug` unused)      -> every text re-encoded at refresh
Everything else is configs/ance_exp/base.py (3 negatives at 128 tokens, batch 32, dev 80 queries, refresh and
checkpoint every epoch): `memory` negatives are mined with the starting model, then at every refresh.
"""

from pathlib import Path

from jdr.config import load_config

EPOCHS = 2
DATA = "runs/memory_experiment/data"  # written by benchmarks/memory_negatives.py (relative to the repo root)
TRAIN_PART = f"{DATA}/scifact_train_part"  # BEIR dir: the training part of the corpus, SciFact's queries + train qrels
AUG = f"{DATA}/scifact_aug"  # corpus.jsonl (the augmentation part) + store/ (its MiniLM embeddings at 128 tokens)


def get_config():
    c = load_config(Path(__file__).resolve().parents[1] / "ance_exp" / "base.py")
    c.data.dataset = TRAIN_PART
    c.negatives.source = "memory"
    c.negatives.memories = f"aug={AUG}/store,{AUG}/corpus.jsonl"
    c.negatives.memory_mix = "merged"
    c.negatives.refresh_every = 25  # every epoch (the runner sets the epoch's step count)
    return c
