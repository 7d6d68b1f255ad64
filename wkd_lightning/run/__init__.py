"""What a run needs around the module: config layers, run directories, recipe and input fingerprints, summary,
tracking, interruption, the loss watch, predictions, one-line errors, distributed helpers, and the recipes' optimizers
and run-length-aware LR schedules (:mod:`wkd_lightning.run.optim`)."""
