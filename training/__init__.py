"""Helpers of the training loop in train.py: config, runtime, optimiser and schedule, checkpoints, metrics; and
of the runs it writes: backend sweeps (sweep.py) and their comparison (comparison.py, comparison_plot.py)."""
