"""Row "ANCE + cross-encoder denoising" (RocketQA): as ance.py, and at each refresh the experiment's cross-encoder
(`negatives.ce_denoise_model`, set by the runner) judges each query's first 15 ANN candidates and drops those it
scores at or above the query's weakest positive (margin 0): the likely unlabelled positives."""

from jdr.config import sibling


def get_config():
    c = sibling(__file__, "ance.py")
    c.negatives.ce_denoise_model = ""  # the runner sets it: ROOT/cross_encoder (the trained workdir)
    c.negatives.ce_denoise_margin = 0.0
    c.negatives.ce_denoise_depth = 15
    return c
