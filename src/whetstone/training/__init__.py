"""Training: the trainer, its callbacks and history, checkpoints, evaluation, several processes."""
