"""The training loop, its settings and presets, optimiser and schedule, checkpoints, devices."""
