"""The look the benchmark figures share: sizes on a base-2 log axis, times and bytes on a log axis."""

from __future__ import annotations

from matplotlib.axes import Axes


def style_log_axes(axes: Axes, title: str, xlabel: str, legend_fontsize: int = 8) -> None:
    """Log-log `axes` (base 2 along x, where sequence lengths and positions double), titled, gridded, with a
    legend."""
    axes.set_xscale("log", base=2)
    axes.set_yscale("log")
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=legend_fontsize)
