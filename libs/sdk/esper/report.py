"""A run report a person can open: one PNG and one self-contained HTML page (the PNG embedded).

Three panels share the epoch axis: validation accuracy (with the host trained alone for comparison,
germinations and outcomes marked), the lifecycle of every adaptation as coloured stage bars, and the
parameter count over time.

The charts need matplotlib, the SDK's optional ``report`` extra (``pip install 'esper-sdk[report]'``; the
recipes and the development environment have it). It is imported only when a report is written, so
``import esper`` never loads it; without it the page holds the tables alone and says how to get the charts
(the trainer image ships without it).
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .lineage import Lineage
from .tolaria import TrainingHistory

if TYPE_CHECKING:
    import matplotlib.pyplot as plt

STAGE_COLOURS = {
    "GERMINATED": "#c7e9c0",
    "LOADING": "#a1d99b",
    "TRAINING": "#fdd49e",
    "GRAFTING": "#fc8d59",
    "STABILIZATION": "#9ecae1",
    "EVALUATING": "#6baed6",
    "FINE_TUNING": "#807dba",
    "FOSSILIZED": "#252525",
    "CULLED": "#d7301f",
    "CANCELLED": "#bdbdbd",
    "ROLLED_BACK": "#e7298a",
}
OUTCOME_MARKERS = {"FOSSILIZED": ("*", "#252525"), "CULLED": ("X", "#d7301f"), "ROLLED_BACK": ("P", "#e7298a"),
                   "CANCELLED": ("o", "#969696")}


def charts_available() -> bool:
    """Whether matplotlib (the ``report`` extra) is installed, so reports get their charts."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def _series(history: TrainingHistory, key: str) -> tuple[list[int], list[float]]:
    epochs = [int(e["epoch"]) for e in history.epochs]
    return epochs, [float(e[key]) for e in history.epochs]


def plot_run(history: TrainingHistory, lineage: Lineage, *, title: str,
             baseline: TrainingHistory | None = None) -> plt.Figure:
    """The three-panel figure of one run (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    adaptations = lineage.germinations
    fig, (ax_acc, ax_life, ax_par) = plt.subplots(
        3, 1, figsize=(11, 9.5), sharex=True,
        gridspec_kw={"height_ratios": [3.2, max(1.2, 0.45 * len(adaptations) + 0.6), 1.6]},
    )
    last_epoch = max((int(e["epoch"]) for e in history.epochs), default=1)

    # Accuracy, with germinations (dotted lines) and outcomes (markers) on the Esper curve.
    epochs, val_acc = _series(history, "val_accuracy")
    ax_acc.plot(epochs, val_acc, color="#2166ac", lw=2, label="Esper: validation accuracy")
    ax_acc.plot(*_series(history, "train_accuracy"), color="#2166ac", lw=1, alpha=0.35, label="Esper: train accuracy")
    if baseline is not None:
        ax_acc.plot(*_series(baseline, "val_accuracy"), color="#7f7f7f", lw=1.6, ls="--",
                    label="host alone: validation accuracy")
    acc_at = dict(zip(epochs, val_acc, strict=True))
    for g in adaptations:
        ax_acc.axvline(g.germinated_epoch, color="#4daf4a", ls=":", lw=1.2)
        ax_acc.annotate(f"{g.seed_id}\n{g.blueprint_name or ''}", (g.germinated_epoch, 0.02),
                        xycoords=("data", "axes fraction"), fontsize=7, color="#2d7a2b", rotation=90,
                        ha="right", va="bottom")
        if g.outcome in OUTCOME_MARKERS and g.outcome_epoch in acc_at:
            marker, colour = OUTCOME_MARKERS[g.outcome]
            ax_acc.plot(g.outcome_epoch, acc_at[g.outcome_epoch], marker=marker, color=colour, ms=12, ls="none")
    for rb in history.rollbacks:
        ax_acc.axvline(rb["epoch"], color="#e7298a", lw=1.5)
    low = min(val_acc + (_series(baseline, "val_accuracy")[1] if baseline else []), default=0.0)
    ax_acc.set_ylim(max(0.0, low - 0.05), 1.0)
    ax_acc.set_ylabel("accuracy")
    ax_acc.set_title(title, fontsize=12, loc="left")
    ax_acc.grid(alpha=0.3)
    handles, _ = ax_acc.get_legend_handles_labels()
    handles += [plt.Line2D([], [], color="#4daf4a", ls=":", label="germination")]
    handles += [plt.Line2D([], [], marker=m, color=c, ls="none", ms=9, label=k.lower())
                for k, (m, c) in OUTCOME_MARKERS.items() if any(g.outcome == k for g in adaptations)]
    ax_acc.legend(handles=handles, loc="lower right", fontsize=8, ncol=2)

    # Lifecycle: one row per adaptation, one coloured bar per stage.
    for row, g in enumerate(adaptations):
        stages = g.stages
        for k, step in enumerate(stages):
            start = step["epoch"]
            end = stages[k + 1]["epoch"] if k + 1 < len(stages) else (start + 0.6 if g.outcome else last_epoch + 1)
            width = max(end - start, 0.25)
            ax_life.barh(row, width, left=start, color=STAGE_COLOURS.get(step["stage"], "#dddddd"),
                         edgecolor="white", height=0.7)
    ax_life.set_yticks(range(len(adaptations)))
    ax_life.set_yticklabels([f"{g.seed_id} {g.blueprint_name or ''}" for g in adaptations], fontsize=8)
    ax_life.invert_yaxis()
    ax_life.set_ylabel("adaptations")
    if not adaptations:
        ax_life.text(0.5, 0.5, "no germination", transform=ax_life.transAxes, ha="center", va="center")
    used = {s["stage"] for g in adaptations for s in g.stages}
    ax_life.legend(handles=[Patch(color=c, label=s.lower()) for s, c in STAGE_COLOURS.items() if s in used],
                   fontsize=7, ncol=5, loc="upper left", bbox_to_anchor=(0, -0.02), frameon=False)
    ax_life.grid(axis="x", alpha=0.3)

    # Parameters over time.
    ax_par.step(*_series(history, "total_params"), where="post", color="#2166ac", lw=2, label="Esper")
    if baseline is not None:
        ax_par.step(*_series(baseline, "total_params"), where="post", color="#7f7f7f", ls="--", label="host alone")
    cuts = [int(e["epoch"]) for e in history.epochs if (e.get("pruning") or {}).get("units_removed")]
    for k, epoch in enumerate(cuts):  # Tolaria's lysis: the parameter count falls here
        ax_par.axvline(epoch, color="#d6604d", lw=1, ls=":", label="pruning (lysis)" if k == 0 else None)
    ax_par.set_ylabel("parameters")
    ax_par.set_xlabel("epoch")
    ax_par.grid(alpha=0.3)
    ax_par.legend(fontsize=8, loc="upper left")
    ax_par.set_xlim(0.5, last_epoch + 1)
    fig.tight_layout()
    return fig


def _png(fig: plt.Figure) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else ("" if value is None else str(value))


def write_report(out: Path, *, task: str, history: TrainingHistory, lineage: Lineage | None,
                 summary: dict[str, Any], baseline: TrainingHistory | None = None) -> tuple[Path, Path]:
    """Write ``report.png`` (when matplotlib is installed) and ``report.html`` into ``out``; returns both paths."""
    out.mkdir(parents=True, exist_ok=True)
    lineage = lineage or Lineage(run_id="unknown")
    title = (f"{task}: host alone {summary.get('host_test_accuracy', float('nan')):.3f} → "
             f"Esper {summary.get('esper_test_accuracy', float('nan')):.3f} test accuracy")
    png_path = out / "report.png"
    if charts_available():
        png = _png(plot_run(history, lineage, title=title, baseline=baseline))
        png_path.write_bytes(png)
        figure = (f'<img alt="accuracy, lifecycle and parameters over epochs" '
                  f'src="data:image/png;base64,{base64.b64encode(png).decode()}">')
    else:
        figure = ("<p><em>Charts need matplotlib: <code>pip install 'esper-sdk[report]'</code>. "
                  "The numbers are below and in metrics.jsonl.</em></p>")

    adaptations = [[g.seed_id, g.blueprint_name or g.blueprint_id, g.germinated_epoch, g.reason,
                    " → ".join(f"{s['stage'].lower()}@{s['epoch']}" for s in g.stages), g.outcome or "UNFINISHED",
                    _fmt(g.metrics_before.get("val_accuracy")), _fmt(g.metrics_after.get("val_accuracy"))]
                   for g in lineage.germinations]
    rollbacks = [[r["epoch"], r["reason"], ", ".join(r["seeds"])] for r in history.rollbacks]
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Esper report: {html.escape(task)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1150px; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }}
th {{ background: #f0f0f0; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>Esper report: {html.escape(task)}</h1>
{_table(["", "host alone", "Esper"], [
    ["test accuracy", _fmt(summary.get("host_test_accuracy")), _fmt(summary.get("esper_test_accuracy"))],
    ["parameters", summary.get("host_parameters", ""), summary.get("esper_parameters", "")],
])}
{figure}
<h2>Adaptations</h2>
{_table(["seed", "blueprint", "germinated", "why", "stages", "outcome", "val acc before", "val acc after"],
        adaptations) if adaptations else "<p>No germination.</p>"}
<h2>Removal</h2>
{_table(["epoch", "mode", "accepted", "parameters", "MACs", "val loss", "reason"],
        [[r["epoch"], r["mode"], r["accepted"], f"{r['parameters_before']} → {r['parameters_after']}",
          f"{r['macs_before']} → {r['macs_after']}", f"{_fmt(r.get('loss_before'))} → {_fmt(r.get('loss_after'))}",
          r["reason"]] for r in lineage.removals]) if lineage.removals else "<p>No pruning.</p>"}
<h2>Rollbacks</h2>
{_table(["epoch", "reason", "seeds locked"], rollbacks) if rollbacks else "<p>None.</p>"}
</body></html>
"""
    html_path = out / "report.html"
    html_path.write_text(page, encoding="utf-8")
    return png_path, html_path
