"""Training: the score network (:mod:`.models`), EMA (:mod:`.ema`), data sets (:mod:`.data`),
the training loop (:mod:`.train`), checkpoints (:mod:`.checkpoint`) and torchrun (:mod:`.distributed`)."""
