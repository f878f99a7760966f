"""The comparison figure: val loss against training tokens and against wall-clock time, one curve per group of runs
(the mean over its runs) with a band from the lowest to the highest run."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from experiments.comparison import Curve
from fileio.atomic import save_figure_atomic


def plot_val_curves(curves: dict[str, Curve], path: Path) -> None:
    """Write the two panels (val loss vs tokens, vs elapsed seconds) of `curves` (group label -> curve) as a PNG."""
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    by_tokens, by_time = figure.subplots(1, 2, sharey=True)
    for label, curve in curves.items():
        for axes, x in ((by_tokens, curve.tokens), (by_time, curve.elapsed)):
            (line,) = axes.plot(x, curve.mean, marker="o", markersize=3, label=label)
            axes.fill_between(x, curve.low, curve.high, color=line.get_color(), alpha=0.2, linewidth=0)
    by_tokens.set(xlabel="training tokens", ylabel="val loss")
    by_time.set(xlabel="wall-clock time in training steps (s)")
    for axes in (by_tokens, by_time):
        axes.grid(alpha=0.3)
    by_tokens.legend(title="mean, band: min-max over seeds")
    save_figure_atomic(figure, path, dpi=120)
