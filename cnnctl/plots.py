"""The pictures of a run: learning curves, confusion matrix, misclassified test images; and a comparison.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot: no display, no global figure
state) and written atomically, so a plot is either the new one or the old one. matplotlib is
imported inside the functions.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np

from cnnctl import history, rundir
from cnnctl.files import write_bytes

LEARNING_CURVES = "learning_curves.png"
CONFUSION_MATRIX = "confusion_matrix.png"
MISCLASSIFIED = "misclassified.png"
GRID = 25  # misclassified images shown (5 x 5)
DPI = 100


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: Path) -> Path:
    """Render to memory, then write under a temporary name and rename (the format is the suffix's)."""
    path = Path(path)
    buffer = io.BytesIO()
    figure.savefig(buffer, format=path.suffix.lstrip(".").lower() or "png", bbox_inches="tight", pad_inches=0.15)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, buffer.getvalue())
    return path


def _epochs(hist: dict) -> list:
    for key in ("epoch", "epochs"):
        if hist.get(key):
            return hist[key]
    return list(range(1, max((len(v) for v in hist.values()), default=0) + 1))


def _nan(values: list) -> list[float]:
    return [math.nan if v is None else v for v in values]


def _epoch_axis(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no epoch 1.5
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)


def learning_curves(hist: dict, path: Path, title: str = "") -> Path:
    """One panel per metric (loss first): training against validation, per epoch."""
    names = history.metric_names(hist) or ["loss"]
    epochs = _epochs(hist)
    figure = _figure(4.2 * len(names), 3.4)
    axes = figure.subplots(1, len(names), squeeze=False)[0]
    for ax, name in zip(axes, names, strict=True):
        for key, label, style in ((name, "training", "o-"), (f"val_{name}", "validation", "s--")):
            values = hist.get(key)
            if values:
                ax.plot(epochs[:len(values)], _nan(values), style, label=label, markersize=4)
        _epoch_axis(ax)
        ax.set_title(name)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        else:
            ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def confusion_matrix(report: dict, path: Path, title: str = "") -> Path:
    """Counts and row-normalised (recall per true class) side by side, with class names."""
    counts = np.asarray(report["confusion_matrix"], dtype=np.int64)
    names = list(report.get("class_names") or [str(i) for i in range(len(counts))])
    n = len(counts)
    with np.errstate(divide="ignore", invalid="ignore"):
        rows = counts.sum(axis=1, keepdims=True)
        normalised = np.where(rows > 0, counts / np.maximum(rows, 1), 0.0)
    side = min(max(5.0, 0.3 * n + 3.0), 15.0) if n <= 40 else 10.0  # beyond 40 classes: no labels to fit
    figure = _figure(2 * side + 1, side)
    axes = figure.subplots(1, 2)
    for ax, matrix, label, fmt in ((axes[0], counts, "counts", "d"), (axes[1], normalised, "row-normalised", ".2f")):
        image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=None if fmt == "d" else 1)
        figure.colorbar(image, ax=ax, shrink=0.8)
        ax.set_title(label)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        if n <= 40:
            ax.set_xticks(range(n), [name[:14] for name in names], rotation=60, ha="right", fontsize=8)
            ax.set_yticks(range(n), [name[:14] for name in names], fontsize=8)
        if n <= 20:
            high = matrix.max() if matrix.size else 0
            for i in range(n):
                for j in range(n):
                    ax.text(j, i, format(matrix[i, j], fmt), ha="center", va="center", fontsize=7,
                            color="white" if high and matrix[i, j] > high / 2 else "black")
    accuracy = report.get("accuracy")
    figure.suptitle(" ".join(p for p in (title, f"test accuracy {accuracy:.4f}" if accuracy is not None else "")
                             if p) or "confusion matrix")
    return _save(figure, path)


def _displayable(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """An image array matplotlib can show, and its colour map (gray for one channel)."""
    if image.ndim == 1:
        side = math.isqrt(image.size)
        image = image.reshape(side, side) if side * side == image.size else image.reshape(1, -1)
    if image.ndim == 3 and image.shape[-1] == 3:
        return image, None
    if image.ndim == 3:
        image = image[..., 0]
    return image, "gray"


def misclassified(images: np.ndarray, mistakes: list[dict], class_names: list[str], path: Path,
                  title: str = "") -> Path:
    """A grid of up to GRID test images the model got wrong, with true and predicted labels."""
    shown = mistakes[:GRID]
    columns = 5 if shown else 1
    rows = max(1, math.ceil(len(shown) / columns))
    figure = _figure(2.0 * columns + 0.4, 2.25 * rows + 0.6) if shown else _figure(6.0, 2.5)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes:
        ax.set_axis_off()
    if not shown:
        axes[0].text(0.5, 0.5, "no misclassified test images", ha="center", va="center")

    def name(index: int) -> str:
        return class_names[index] if index < len(class_names) else str(index)

    for ax, mistake in zip(axes, shown, strict=False):
        picture, cmap = _displayable(np.asarray(images[mistake["index"]]))
        ax.imshow(picture, cmap=cmap, vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(f"true {name(mistake['true'])}\npredicted {name(mistake['predicted'])} "
                     f"({mistake['probability']:.2f})", fontsize=8)
    figure.suptitle(title or "misclassified test images, most confident first")
    return _save(figure, path)


def write_run_plots(run_dir: str | Path, *, report: dict | None = None,
                    test_images: np.ndarray | None = None) -> list[Path]:
    """plots/learning_curves.png, and with an evaluation report (and the test images it counts)
    plots/confusion_matrix.png and plots/misclassified.png."""
    run_dir = Path(run_dir)
    folder = run_dir / rundir.PLOTS
    name = run_dir.name
    written = [learning_curves(history.load(run_dir), folder / LEARNING_CURVES, title=name)]
    if report is None:
        return written
    written.append(confusion_matrix(report, folder / CONFUSION_MATRIX, title=name))
    mistakes = report.get("misclassified") or []
    if mistakes and (test_images is None or len(test_images) != report.get("examples")):
        count = "no" if test_images is None else len(test_images)
        raise ValueError(f"the report counts {report.get('examples')} test images, {count} were given")
    written.append(misclassified(test_images, mistakes, report.get("class_names") or [], folder / MISCLASSIFIED,
                                 title=f"{name}: misclassified test images, most confident first"))
    return written


def try_write_run_plots(run_dir: str | Path, **kwargs) -> list[str]:
    """write_run_plots, for a caller whose results stand without plots: problems become warnings."""
    try:
        write_run_plots(run_dir, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any failure to draw is reported, never raised
        return [f"plots not written: {type(exc).__name__}: {exc}"]
    return []


def compare_curves(rows: list[dict], path: Path) -> Path:
    """Learning curves of several runs overlaid: one panel per metric, a colour per run,
    solid for training and dashed for validation."""
    names: list[str] = []
    for row in rows:
        names += [n for n in history.metric_names(row["history"]) if n not in names]
    names = sorted(names or ["loss"], key=lambda k: (k != "loss", k))
    figure = _figure(4.6 * len(names), 3.8)
    axes = figure.subplots(1, len(names), squeeze=False)[0]
    colours = [f"C{i % 10}" for i in range(len(rows))]
    for ax, metric in zip(axes, names, strict=True):
        for row, colour in zip(rows, colours, strict=True):
            hist = row["history"]
            epochs = _epochs(hist)
            for key, style, suffix in ((metric, "o-", ""), (f"val_{metric}", "s--", " (val)")):
                if hist.get(key):
                    ax.plot(epochs[:len(hist[key])], _nan(hist[key]), style, color=colour, markersize=3,
                            label=f"{row['name']}{suffix}")
        _epoch_axis(ax)
        ax.set_title(metric)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    figure.suptitle("compare: " + ", ".join(row["name"] for row in rows))
    return _save(figure, path)


# ---------------------------------------------------------------- a study (cnnctl tune)


def study_plots(rows: list[dict], keys: list[str], metric: str, direction: str, importances: dict[str, float],
                folder: Path) -> list[Path]:
    """plots/optimization_history.png (each trial's value and the best so far), param_importances.png
    (Optuna's fANOVA importances) and slice.png (the value against each searched key)."""
    done = [r for r in rows if r["value"] is not None and r["state"] in ("complete", "pruned")]
    better = max if direction == "maximize" else min
    figure = _figure(7.0, 3.8)
    ax = figure.subplots()
    for state, marker, colour in (("complete", "o", "C0"), ("pruned", "x", "C3")):
        points = [(r["number"], r["value"]) for r in done if r["state"] == state]
        if points:
            ax.plot(*zip(*points, strict=True), marker, color=colour, label=state, markersize=5, linestyle="")
    complete = [r for r in done if r["state"] == "complete"]
    if complete:
        best, line = None, []
        for r in complete:
            best = r["value"] if best is None else better(best, r["value"])
            line.append((r["number"], best))
        ax.step(*zip(*line, strict=True), where="post", color="C2", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    figure.suptitle(f"optimization history ({direction} {metric})")
    written = [_save(figure, folder / "optimization_history.png")]

    figure = _figure(7.0, 0.5 * max(2, len(keys)) + 1.5)
    ax = figure.subplots()
    names = sorted(importances, key=importances.get) if importances else []
    ax.barh(names, [importances[n] for n in names], color="C0")
    if not names:
        ax.text(0.5, 0.5, "needs at least two finished trials that differ", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_xlabel("importance (fANOVA, normalised)")
    figure.suptitle(f"parameter importances for {metric}")
    written.append(_save(figure, folder / "param_importances.png"))

    figure = _figure(3.6 * max(1, len(keys)), 3.4)
    axes = figure.subplots(1, max(1, len(keys)), squeeze=False)[0]
    for ax, key in zip(axes, keys, strict=False):
        points = [(r["params"].get(key), r["value"]) for r in done if key in r["params"]]
        numeric = all(isinstance(x, int | float) and not isinstance(x, bool) for x, _ in points)
        xs = [x if numeric else json.dumps(x) for x, _ in points]
        ax.scatter(xs, [v for _, v in points], c=[r["number"] for r in done if key in r["params"]], cmap="viridis",
                   s=18)
        if numeric and points and min(xs) > 0 and max(xs) / min(xs) > 50:
            ax.set_xscale("log")
        ax.set_title(key, fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(metric)
    figure.suptitle("slice: the value against each searched key (colour: trial number)")
    written.append(_save(figure, folder / "slice.png"))
    return written


def try_study_plots(*args) -> list[str]:
    """study_plots; a plot that cannot be drawn is a warning, never a failed study."""
    try:
        study_plots(*args)
    except Exception as exc:  # noqa: BLE001 - any failure to draw is reported, never raised
        return [f"plots not written: {type(exc).__name__}: {exc}"]
    return []
