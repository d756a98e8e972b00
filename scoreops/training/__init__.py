"""Training: the score network (:mod:`.models`), EMA (:mod:`.ema`), data sets (:mod:`.data`),
the training loop (:mod:`.train`), checkpoints (:mod:`.checkpoint`), the import of the tutorial's
checkpoints (:mod:`.tutorial_import`) and torchrun (:mod:`.distributed`)."""
