"""Matplotlib, for the commands that draw (t-SNE, report plots): an optional extra.

``pip install 'unlearnable[plots]'`` installs it; without it, a command asked to draw stops with
one line saying so, before any long work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pyplot(what: str) -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (no display needed).

    Raises:
        UnlearnableError: matplotlib is not installed; the message names ``what`` needed it.
    """
    from .errors import UnlearnableError

    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        raise UnlearnableError(f"{what} needs matplotlib: pip install 'unlearnable[plots]'") from None
    return plt


def save_figure(fig: Any, path: Path) -> None:
    """Write ``fig`` as PNG through a temporary file and an atomic rename, then close it."""
    from .data.save import atomic_write

    try:
        atomic_write(Path(path), lambda f: fig.savefig(f, format="png"))
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
