"""ANCE with its asynchronous refresh (a background thread), same budget as configs/scifact_ance.py.

The step loop keeps training on the previous table while a snapshot of the parameters re-encodes the corpus; the
new table is swapped in between two steps, and a refresh that falls due while one is still running is skipped
(logged in metrics.jsonl and final_metrics.json). Meant for hosts where the encode has hardware of its own (the
host CPU beside a TPU/GPU, or a spare accelerator). On a 2-core CPU the background encode competes with the step
for the same cores, so a refresh lands many steps after it started: configs/scifact_ance.py is synchronous there.
"""

from jdr.config import sibling


def get_config():
    c = sibling(__file__, "scifact_ance.py")
    c.model.dtype = "float32"  # its table (benchmarks/results/ance_table.md) was measured in float32
    c.negatives.refresh_mode = "async"
    return c
