"""The bottom layer: the noise stream's constants and plain-torch reference (:mod:`.noise`) and
the input checks (:mod:`.checks`). Everything else imports these; they import nothing of scoreops."""
