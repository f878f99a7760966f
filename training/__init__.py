"""Helpers of the training loop in train.py: config, runtime, optimiser and schedule, checkpoints, metrics."""
