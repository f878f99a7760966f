"""Experiments over many runs: backend sweeps (sweep.py), their comparison (comparison.py, run_identity.py,
comparison_plot.py), the axes the benchmark figures share (log_axes.py) and the model shapes the benchmark scripts time
(bench_shapes.py)."""
