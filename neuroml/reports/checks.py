"""Plain-text verdicts of the attribution trust checks (``sanity.json``), shared by the HTML
report and the model card (so both say the same thing)."""

import numpy as np

__all__ = ["check_lines", "check_state", "current_sanity", "fmt_num"]


def fmt_num(v, digits=3):
    """A number for a report: ``n/a`` when missing or not finite, integers as such."""
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "n/a"
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.{digits}f}"
    return str(v)


def current_sanity(attribution, sanity):
    """``sanity`` (a ``sanity.json``) when it belongs to the attribution call that wrote
    ``attribution`` (an ``attribution.json``: the same ``call_id``, or neither has one), else
    None.

    Examples
    --------
    >>> current_sanity({"call_id": "a"}, {"call_id": "a"}) is not None
    True
    >>> current_sanity({"call_id": "b"}, {"call_id": "a"}) is None
    True
    """
    if not isinstance(sanity, dict) or not isinstance(attribution, dict):
        return None
    return sanity if sanity.get("call_id") == attribution.get("call_id") else None


def check_state(passed):
    """The CSS class of a verdict: ``ok`` (passed), ``warn`` (failed), ``na`` (undecided)."""
    return "na" if passed is None else ("ok" if passed else "warn")


def _verdict(passed, failed="FAILED"):
    """``PASSED``, ``failed`` or ``not decided``."""
    return "not decided" if passed is None else ("PASSED" if passed else failed)


def check_lines(method, sanity):
    """``(state, text)`` per trust check of one method's ``sanity.json``, each with its verdict
    (PASSED, FAILED or not decided) in plain text (escape it for HTML)."""
    items = []

    def add(check, text, failed="FAILED", detail=""):
        passed = check.get("passed")
        items.append(
            (check_state(passed), f"{method}, {text}; {_verdict(passed, failed)}{detail}.")
        )

    rnd = sanity.get("randomization")
    if isinstance(rnd, dict):
        constant = rnd.get("n_constant") or 0
        add(
            rnd,
            f"model randomization: median |rho| = {fmt_num(rnd.get('median_abs_rho'))} over "
            f"{len(rnd.get('rho') or []) - constant} subjects"
            + (f" ({constant} left out: constant trained map)" if constant else ""),
            "FAILED: the map does not depend enough on the learned weights",
            (f": {rnd['note']}" if rnd.get("passed") is None and rnd.get("note") else "")
            + f" (rule: {rnd.get('rule')})",
        )
    dele = sanity.get("deletion")
    if isinstance(dele, dict):
        add(
            dele,
            f"deletion: area {fmt_num(dele.get('auc'))} removing top-ranked regions first vs "
            f"{fmt_num(dele.get('auc_random'))} in random order",
        )
    for cls, st in (sanity.get("stability") or {}).items():
        chance = (
            f", chance {fmt_num(st.get('chance_top_overlap'), 2)}, "
            f"p = {fmt_num(st.get('top_overlap_p'), 4)}"
            if st.get("top_overlap_p") is not None
            else ""
        )
        add(
            st,
            f"stability of class {cls}: median Spearman rho of region scores between folds "
            f"{fmt_num(st.get('median_rho'))}, median share of top-{st.get('top_k', 10)} regions "
            f"in common {fmt_num(st.get('median_top_overlap'), 2)}{chance} "
            f"({len(st.get('pairs') or [])} fold pairs; rule {st.get('rule')})",
        )
    for cls, g in (sanity.get("ground_truth") or {}).items():
        add(
            g,
            f"ground truth of class {cls}: {fmt_num(100 * (g.get('mass_accuracy') or 0), 1)} % of "
            "the positive attribution inside the planted regions "
            f"({fmt_num(100 * (g.get('planted_share') or 0), 1)} % of the brain, "
            f"{fmt_num(g.get('mass_enrichment'), 1)}x), voxel ROC AUC {fmt_num(g.get('roc_auc'))}, "
            f"{g.get('top_k_planted')}/{g.get('top_k')} of the top regions planted",
        )
    if not items:
        items.append(("na", f"{method}: sanity.json holds no check."))
    return items
