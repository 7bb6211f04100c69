"""Dataset readers, the synthetic generator, and the training data path."""
