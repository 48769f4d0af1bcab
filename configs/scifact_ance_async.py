"""ANCE with its asynchronous refresh (background thread), same budget as configs/scifact_ance.py.

What happened on 2 CPU cores (README, ANCE table): the step-10 refresh shared the cores with the step loop, took
17 minutes instead of ~11, had not landed by step 30 (the step-20 refresh was skipped while it ran), so every step
trained on the BM25 warm-start negatives; the loop never waited for it. Use this mode where the encode has
hardware of its own.
"""

from jdr.config import sibling


def get_config():
    c = sibling(__file__, "scifact_ance.py")
    c.negatives.refresh_mode = "async"
    return c
