"""Pictures of the report, each returned as PNG bytes.

Figures are drawn on :class:`matplotlib.figure.Figure` with the Agg canvas directly,
never through ``pyplot``, so no window opens and the caller's backend is left alone.
"""

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = [
    "figure_png",
    "roc_png",
    "confusion_png",
    "curves_png",
    "glass_brain_png",
    "stat_map_png",
    "deletion_png",
]


def _figure(size):
    """A matplotlib figure of ``size`` inches drawn off screen (no pyplot state)."""
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig, dpi=90):
    """Render a matplotlib figure to PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


def roc_png(curves, aucs=None, title="ROC, one class vs rest"):
    """ROC curves, one per class.

    Parameters
    ----------
    curves : dict of str to dict
        ``{class: {"fpr": [...], "tpr": [...]}}``; empty curves are skipped.
    aucs : dict of str to float, optional
        Shown in the legend.

    Returns
    -------
    bytes
        PNG.
    """
    fig = _figure((4.6, 4.2))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1, label="chance")
    for name, c in curves.items():
        if c.get("fpr"):
            auc = (aucs or {}).get(name)
            label = f"{name} (AUC {auc:.2f})" if isinstance(auc, (int, float)) else str(name)
            ax.plot(c["fpr"], c["tpr"], lw=1.8, label=label, drawstyle="steps-post")
    ax.set(
        xlabel="1 - specificity (false positive rate)",
        ylabel="sensitivity (true positive rate)",
        xlim=(-0.01, 1.01),
        ylim=(-0.01, 1.01),
        title=title,
    )
    ax.legend(loc="lower right", fontsize=8)
    return figure_png(fig)


def confusion_png(matrix, classes, title="Confusion matrix"):
    """A confusion matrix with counts in the cells; returns PNG bytes."""
    cm = np.asarray(matrix, dtype=float)
    fig = _figure((1.6 + 0.9 * len(classes), 1.4 + 0.8 * len(classes)))
    ax = fig.add_subplot()
    ax.imshow(cm, cmap="Blues", vmin=0)
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, [str(c) for c in classes], rotation=30, ha="right")
    ax.set_yticks(ticks, [str(c) for c in classes])
    top = cm.max() if cm.size else 0
    for (i, j), v in np.ndenumerate(cm):
        ax.text(
            j, i, f"{int(v)}", ha="center", va="center", color="white" if v > top / 2 else "black"
        )
    ax.set(xlabel="predicted", ylabel="true")
    ax.set_title(title, fontsize=9)
    return figure_png(fig)


def curves_png(histories, columns=("train_loss", "val_loss"), title="Training curves"):
    """Loss curves per fold from ``{fold: DataFrame with an 'epoch' column}``; returns PNG bytes."""
    fig = _figure((6.0, 3.4))
    ax = fig.add_subplot()
    for fold, df in histories.items():
        x = df["epoch"] if "epoch" in df else np.arange(len(df))
        for col, ls in zip(columns, ("-", "--")):
            if col in df:
                ax.plot(x, df[col], ls=ls, label=f"fold {fold} {col}")
    ax.set(xlabel="epoch", ylabel="loss", title=title)
    ax.legend(fontsize=7, ncol=2)
    return figure_png(fig)


def deletion_png(curves, title="Deletion curves: target probability as regions are removed"):
    """Deletion curves of several methods; returns PNG bytes.

    Parameters
    ----------
    curves : dict of str to dict
        ``{method: {"steps": [...], "probability": [...], "probability_random": [...]}}``;
        the attribution order is drawn solid, the random orders dashed in the same colour.
    """
    fig = _figure((8.6, 3.8))
    ax = fig.add_subplot()
    for i, (name, c) in enumerate(curves.items()):
        color = f"C{i % 10}"
        ax.plot(
            c["steps"], c["probability"], color=color, lw=1.8, marker="o", ms=3, label=f"{name}"
        )
        if c.get("probability_random"):
            ax.plot(
                c["steps"],
                c["probability_random"],
                color=color,
                lw=1.2,
                ls="--",
                label=f"{name}: random order",
            )
    ax.set(
        xlabel="atlas regions removed (highest attribution first)",
        ylabel="target class probability",
        ylim=(-0.02, 1.02),
        title=title,
    )
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return figure_png(fig)


def _cmap(img):
    """The colormap: "hot" for a map without negative values, "cold_hot" (symmetric) for a
    signed one."""
    return "hot" if float(np.nanmin(np.asarray(img.dataobj))) >= 0 else "cold_hot"


def glass_brain_png(img, title=None, threshold=None):
    """A nilearn glass brain (four views) of a 3D map; returns PNG bytes.

    ``threshold`` hides values below it in absolute value (default: nilearn's "auto").
    """
    from nilearn import plotting

    fig = _figure((7.5, 2.6))
    fig.set_layout_engine(None)
    plotting.plot_glass_brain(
        img,
        figure=fig,
        display_mode="lyrz",
        colorbar=True,
        plot_abs=False,
        cmap=_cmap(img),
        title=title,
        threshold="auto" if threshold is None else threshold,
    )
    return figure_png(fig)


def stat_map_png(img, bg_img=None, title=None, n_cuts=6, threshold=None):
    """Axial slices of a 3D map over a background (default: the MNI template); PNG bytes."""
    from nilearn import plotting

    if bg_img is None:
        from neuroml.io.templates import mni_template

        bg_img = mni_template()
    fig = _figure((9.0, 2.4))
    fig.set_layout_engine(None)
    plotting.plot_stat_map(
        img,
        bg_img=bg_img,
        figure=fig,
        display_mode="z",
        cut_coords=n_cuts,
        colorbar=True,
        cmap=_cmap(img),
        title=title,
        draw_cross=False,
        threshold=threshold,
    )
    return figure_png(fig)
