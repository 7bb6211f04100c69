"""Training: the loop, which labels it reads, how a run's settings resolve, batches, checkpoints, the optimiser."""
