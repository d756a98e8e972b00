"""Evaluation: sample-quality metrics (:mod:`.metrics`), the sampler comparison (:mod:`.compare`),
the paper's figures (:mod:`.figures`) and the eager tutorial samplers they are checked
against (:mod:`.reference`)."""
