"""The look the benchmark figures share: sizes on a log axis, times and bytes on a log axis."""

from __future__ import annotations

from matplotlib.axes import Axes


def style_log_axes(axes: Axes, title: str, xlabel: str, legend_fontsize: int = 8, *, ylabel: str | None = None,
                   xbase: int = 2, yscale: str = "log") -> None:
    """`axes` with x on a log axis (base 2 by default, where sequence lengths and positions double; 10 where the
    sizes span decades) and y on `yscale` ("log" for times and bytes, "linear" for a loss), titled, gridded, with a
    legend when something is labelled (a panel with no data has none)."""
    axes.set_xscale("log", base=xbase)
    axes.set_yscale(yscale)
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    if ylabel is not None:
        axes.set_ylabel(ylabel)
    axes.grid(True, which="both", alpha=0.3)
    if axes.get_legend_handles_labels()[1]:
        axes.legend(fontsize=legend_fontsize)
