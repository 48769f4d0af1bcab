"""Row "denoised ANN": ANCE's negatives minus the likely false negatives (RocketQA's denoising, with the model
being trained as the teacher): at each refresh a candidate is dropped when the model scores it at or above the
query's weakest positive (`denoise_threshold = 0`: a doc the model already prefers to the labelled positive is
as likely an unlabelled positive as a mistake; SciFact judges ~1.1 docs per query), and the top 3 of every
ranked list (the BM25 warm start included) are skipped, where unlabelled positives concentrate."""

from jdr.config import sibling


def get_config():
    c = sibling(__file__, "ance.py")
    c.negatives.skip_top = 3
    c.negatives.denoise_threshold = 0.0
    return c
