"""Plots drawn off-screen (matplotlib's Agg backend: no display needed), and the look of every curve against
the step that reports, comparisons and the demo draw.

matplotlib is imported by the first plot, not with this module, so a command that draws nothing (and
``reinlm --help``) does not load it.
"""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def step_figure():
    """A new ``(fig, ax)`` of the size every curve-against-step plot shares (6.4 x 3.6 inches at 100 dpi)."""
    return pyplot().subplots(figsize=(6.4, 3.6), dpi=100)


def save_step_plot(fig, ax, key: str, path: Path, legend: bool) -> Path:
    """Label a curve-against-step plot (x: step, y: ``key``, grid, optional legend) and save it as ``path``."""
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.grid(True, alpha=0.3)
    if legend:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    pyplot().close(fig)
    return path
