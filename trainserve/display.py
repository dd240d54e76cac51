"""What the client shows: tables as HTML in a notebook and as text elsewhere, the live progress bar, the curves.

Nothing here is imported until something is shown; tqdm and matplotlib only when a bar or a plot is asked for."""

from __future__ import annotations

import html
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

# The history columns a table or a bar leaves out of the metrics.
NOT_METRICS = frozenset({"epoch", "attempt"})
NOTEBOOK_EXTRA = "install the notebook extra: pip install '.[notebook]' in a checkout of TrainServe"


def in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (where HTML and widgets are shown), not a terminal or a script."""
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    get_ipython = getattr(shell, "get_ipython", None)
    ip = get_ipython() if get_ipython is not None else None
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


def show(value: Any) -> None:
    """Display ``value`` as a notebook displays a cell's result (its HTML), or print it."""
    if in_notebook():
        from IPython.display import display

        display(value)  # type: ignore[no-untyped-call]
    else:
        print(value)


def number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if math.isnan(value) or math.isinf(value):
        return str(value)
    return f"{value:.4g}" if abs(value) < 1e-3 and value != 0 else f"{value:.4f}"


def metric_names(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """The metrics the rows have, in the order Keras logs them (loss first, val_* after theirs)."""
    names: list[str] = []
    for row in rows:
        for key, value in row.items():
            if key not in NOT_METRICS and key not in names and isinstance(value, int | float):
                names.append(key)
    plain = [n for n in names if not n.startswith("val_") and n != "learning_rate"]
    ordered = sorted(plain, key=lambda n: (n != "loss", plain.index(n)))
    ordered += [f"val_{n}" for n in ordered if f"val_{n}" in names]
    ordered += [n for n in names if n not in ordered]
    return ordered


def html_table(columns: Sequence[str], rows: Iterable[Sequence[Any]], *, caption: str = "") -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f'<td style="text-align:right">{html.escape(number(v))}</td>' for v in row) + "</tr>"
        for row in rows
    )
    title = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{title}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def text_table(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    cells = [list(columns), *([number(v) for v in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)) for row in cells)


def pairs_html(items: Mapping[str, Any]) -> str:
    return " · ".join(f"{html.escape(k)} <b>{html.escape(number(v))}</b>" for k, v in items.items())


def pre_html(text: str) -> str:
    """Text as it prints, box-drawing characters joined: the monospace stack and line height rich uses."""
    style = (
        "white-space:pre;overflow-x:auto;line-height:normal;"
        "font-family:Menlo,'DejaVu Sans Mono',consolas,'Courier New',monospace"
    )
    return f'<pre style="{style}">{html.escape(text)}</pre>'


class Bar(Protocol):
    n: int
    total: float | None

    def update(self, n: float = 1) -> bool | None: ...
    def set_description_str(self, desc: str | None = None, refresh: bool = True) -> None: ...
    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None: ...
    def reset(self, total: float | None = None) -> None: ...
    def refresh(self) -> None: ...
    def close(self) -> None: ...


def progress_bar(total: int | None, description: str, unit: str) -> Bar:
    """A live bar: tqdm.auto's, a widget in Jupyter (with ipywidgets, from the notebook extra) and a text bar
    elsewhere."""
    import warnings

    from tqdm.auto import tqdm

    with warnings.catch_warnings():
        # Without ipywidgets tqdm.auto falls back to its text bar, and says so with a warning; the text bar is fine.
        warnings.filterwarnings("ignore", message="IProgress not found")
        bar: Bar = tqdm(total=total, desc=description, unit=unit, dynamic_ncols=True, leave=True)
    return bar


def metrics_text(row: Mapping[str, Any]) -> str:
    return " · ".join(
        f"{key} {number(value)}" for key, value in row.items() if key not in NOT_METRICS and isinstance(value, float)
    )


def pyplot() -> Any:
    """matplotlib.pyplot, or an ImportError that says how to get it."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(f"plotting needs matplotlib, which is not installed: {NOTEBOOK_EXTRA}") from exc
    return plt


def plot_curves(
    curves: Mapping[str, Mapping[str, tuple[list[int], list[float | None]]]],
    metrics: Sequence[str],
    *,
    title: str,
    dashed: frozenset[str] = frozenset(),
) -> list[Any]:
    """One axes per metric, each with a line per series (a job's train and validation curves, or one per trial),
    validation and ``dashed`` series dashed. Drawn with pyplot, as pandas' ``DataFrame.plot()`` draws: a notebook
    shows the figure under the cell, a script shows it with ``plt.show()``. Returns the axes, one per metric."""
    plt = pyplot()
    figure, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for label, series in curves.items():
            if metric not in series:
                continue
            epochs, values = series[metric]
            style = "--" if label in dashed else "-"
            ax.plot(epochs, [math.nan if v is None else v for v in values], style, marker=".", label=label)
        ax.set_title(metric)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    figure.suptitle(title)
    figure.tight_layout()
    return list(axes[0])
