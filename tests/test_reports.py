"""The HTML report: self-contained, escaped, complete with or without attribution outputs."""

import base64
import json
import re
import shutil
import subprocess

import nibabel as nib
import numpy as np
import pytest

from neuroml.attribution import region_table, write_group_maps, write_region_table
from neuroml.attribution.group import class_entity, class_group_maps
from neuroml.errors import InputError
from neuroml.reports import build_report, figures

EVIL = "<script>alert(1)</script>"
CLASSES = ["control", EVIL]
RES = 8.0
SANITY = {
    "randomization": {
        "rho": [0.05, 0.61, 0.4],
        "median_abs_rho": 0.4,
        "passed": False,
        "rule": f"rule {EVIL}",
    },
    "deletion": {
        "steps": [0, 1, 2, 4],
        "probability": [0.9, 0.5, 0.4, 0.3],
        "probability_random": [0.9, 0.85, 0.8, 0.7],
        "auc": 0.44,
        "auc_random": 0.8,
        "passed": True,
    },
    "stability": {
        EVIL: {"pairs": [["0", "1", 0.7]], "median_rho": 0.7, "passed": True, "rule": "rho >= 0.5"}
    },
    "ground_truth": {
        EVIL: {
            "mass_accuracy": 0.42,
            "planted_share": 0.021,
            "mass_enrichment": 20.0,
            "roc_auc": 0.93,
            "top_k_planted": 5,
            "top_k": 5,
            "passed": True,
        }
    },
    "subjects": ["sub-03", "sub-05"],
}


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _metrics(rng):
    from neuroml.training.metrics import classification_report

    y = np.array([0, 0, 0, 1, 1, 1])
    proba = np.clip(np.eye(2)[y] * 0.6 + rng.uniform(0, 0.4, size=(6, 2)), 0, 1)
    proba /= proba.sum(1, keepdims=True)
    cnn = classification_report(y, proba, CLASSES, n_bootstrap=50)
    base = classification_report(y, proba[:, ::-1], CLASSES, n_bootstrap=50)
    base["model"] = f"logistic regression {EVIL}"
    return {"classes": CLASSES, "cnn": cnn, "baseline": base}, y, proba


def _attribution(run, rng):
    from neuroml.io.atlases import atlas_on_grid
    from neuroml.io.templates import target_grid

    affine, shape = target_grid(RES)
    folder = run / "attribution" / "gradcam"
    maps = np.abs(rng.normal(size=(4, *shape))).astype(np.float32)
    groups = class_group_maps(maps, ["control", "control", EVIL, EVIL], CLASSES)
    written = write_group_maps(groups, affine, folder / "group", CLASSES)
    labels, names = atlas_on_grid("aal", affine, shape)
    names = {**names, min(names): EVIL}  # a hostile region name
    info = {}
    for c, g in groups.items():
        stem = f"regions_atlas-aal_class-{class_entity(c, CLASSES)}"
        write_region_table(region_table(g["mean"], labels, names, 0.512), folder / f"{stem}.tsv")
        info[c] = {
            "n": g["n"],
            "mean_map": f"group/{written[c]['mean'].name}",
            "regions_tsv": f"{stem}.tsv",
            "tstat_map": f"group/{written[c]['tstat'].name}",
        }
    subjects = [
        {
            "participant_id": f"sub-0{i + 1}",
            "map": f"sub-0{i + 1}_desc-gradcam_map.nii.gz",
            "model_use": "out-of-fold",
            "folds": [0],
            "true_label": CLASSES[i // 2],
            "probabilities": {c: 0.5 for c in CLASSES},
            "top_regions": [{"region": EVIL, "mean_attribution": 0.25}],
        }
        for i in range(4)
    ]
    doc = {
        "method": "gradcam",
        "target": "predicted",
        "atlas": "aal",
        "n_subjects": 4,
        "subjects": subjects,
        "group": info,
    }
    _write(folder / "attribution.json", json.dumps(doc))
    nib.save(
        nib.Nifti1Image(maps[0], affine), str(folder / subjects[0]["map"])
    )  # one subject's map on disk
    _write(folder / "sanity.json", json.dumps(SANITY))


def make_run(root, rng, attribution=True):
    from neuroml.io.templates import target_grid

    affine, shape = target_grid(RES)
    run = root / "run"
    config = {
        "classes": CLASSES,
        "model": "compact",
        "label_column": EVIL,
        "resolution": "8",
        "resolution_mm": RES,
        "grid": {"affine": affine.tolist(), "shape": list(shape)},
        "note": EVIL,
    }
    _write(run / "config.json", json.dumps(config))
    metrics, y, proba = _metrics(rng)
    _write(run / "metrics.json", json.dumps(metrics))
    splits = {
        "folds": [
            {"fold": 0, "train": ["sub-03"], "val": [], "test": ["sub-01", "sub-04"]},
            {
                "fold": 1,
                "train": ["sub-01"],
                "val": [],
                "test": ["sub-02", "sub-03", "sub-05", "sub-06"],
            },
        ]
    }
    _write(run / "splits.json", json.dumps(splits))
    _write(run / "provenance.json", json.dumps({"packages": {"numpy": "2.x", EVIL: "1.0"}}))
    rows = ["participant_id\ttrue_label\tpredicted_label\tprob_control\tprob_" + EVIL + "\tfold"]
    for i in range(6):
        pid = EVIL if i == 5 else f"sub-0{i + 1}"
        pred = CLASSES[int(proba[i].argmax())]
        rows.append(
            f"{pid}\t{CLASSES[y[i]]}\t{pred}\t{proba[i, 0]:.4f}\t{proba[i, 1]:.4f}\t{i % 2}"
        )
    _write(run / "predictions.tsv", "\n".join(rows) + "\n")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 1))
    fig.add_subplot().plot([0, 1], [1, 0])
    (run / "training_curve.png").write_bytes(figures.figure_png(fig))
    if attribution:
        _attribution(run, rng)
    return run


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("report"), np.random.default_rng(0))
    return build_report(run)


@pytest.fixture(scope="module")
def text(report):
    return report.read_text(encoding="utf-8")


def test_report_escapes_every_string(text):
    assert EVIL not in text
    assert "<script" not in text.lower()
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert (
        text.count(escaped) >= 8
    )  # class, label column, config, package, baseline, region, participant, ...
    assert re.search(
        r"<td>&lt;script&gt;alert\(1\)&lt;/script&gt;</td>", text
    )  # the participant id cell


def test_report_is_self_contained_with_embedded_pngs(report, text):
    assert report.name == "report.html"
    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    # ROC, confusion matrix, training curve; glass brain + slices + t-map glass brain per class;
    # deletion curves; one subject's glass brain (the other subjects' maps are not on disk)
    assert len(uris) == 3 + 3 * 2 + 1 + 1
    assert all(base64.b64decode(u)[:8] == b"\x89PNG\r\n\x1a\n" for u in uris)
    assert "http://" not in text and "https://" not in text
    links = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]*)""", text)
    assert links and all(v.startswith(("data:image/png;base64,", "#")) for v in links)
    assert "<link" not in text and "@import" not in text


def test_report_sections(text):
    for heading in (
        "Run summary",
        "Classification (out-of-fold)",
        "ROC curves",
        "Training curves",
        "Attribution: gradcam",
        "Subjects",
        "Trust checks",
    ):
        assert heading in text
    assert "[0." in text  # confidence intervals
    assert "not computed in this run" in text  # the permutation test is not faked
    assert (
        "Per-subject attribution (gradcam)" in text and text.count("<details class='subject'>") == 4
    )
    assert "participants in both" not in text
    assert "6 participants tested once each" in text


def test_report_without_attribution_and_leaky_splits(tmp_path, rng):
    run = make_run(tmp_path, rng, attribution=False)
    doc = json.loads((run / "splits.json").read_text())
    doc["folds"][0]["train"].append("sub-01")  # sub-01 trained and tested in fold 0
    (run / "splits.json").write_text(json.dumps(doc))
    out = build_report(run, tmp_path / "elsewhere.html")
    text = out.read_text()
    assert out.name == "elsewhere.html" and not (run / "report.html").exists()
    assert "Attribution: gradcam" not in text and "id='attr-" not in text
    assert "no maps in this run" in text
    assert "Split check failed" in text and "sub-01" in text
    assert text.count("data:image/png;base64,") == 3


def _connectome_metrics(rng):
    metrics, y, proba = _metrics(rng)
    conn = dict(metrics["cnn"])
    conn.update(
        {
            "model": f"logistic regression {EVIL}",
            "kind": EVIL,
            "atlas": "aal",
            "n_regions": 116,
            "n_participants": 6,
            "features": f"tangent connectivity {EVIL}",
        }
    )
    return conn


def test_report_shows_the_connectome_baseline_and_the_inputs(tmp_path, rng):
    run = make_run(tmp_path, rng, attribution=False)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "inputs": ["alff", "falff", EVIL]}))
    conn = _connectome_metrics(rng)
    conn["balanced_accuracy"], conn["ci"]["balanced_accuracy"], conn["auc_macro"] = (
        0.8125,
        [0.6, 0.975],
        0.9375,
    )
    (run / "connectome_metrics.json").write_text(json.dumps(conn))
    text = build_report(run).read_text()
    assert EVIL not in text and "<script" not in text.lower()
    esc = "&lt;script&gt;alert(1)&lt;/script&gt;"
    metrics = text[text.index("id='metrics'") : text.index("id='trust'")]
    assert "<th>connectome baseline</th><th>connectome baseline 95% CI</th>" in metrics
    assert "<td>0.812</td><td>[0.600, 0.975]</td>" in metrics  # balanced accuracy and its CI
    assert "<td>0.938</td>" in metrics  # AUC
    assert f"kind {esc}, atlas aal; tangent connectivity {esc}" in metrics
    assert f"CNN inputs: alff, falff, {esc} (3 channels)" in metrics
    assert (
        f"<td>CNN inputs (channels)</td><td>alff, falff, {esc} (3 channels)</td>" in text
    )  # run summary
    assert "Connectome baseline 0.812 (95% CI [0.600, 0.975])" in text  # trust checks line


@pytest.mark.parametrize("content", [None, "{not json", "[1, 2]"])
def test_report_without_a_usable_connectome_file(tmp_path, rng, content):
    run = make_run(tmp_path, rng, attribution=False)
    if content is not None:
        (run / "connectome_metrics.json").write_text(content)
    text = build_report(run).read_text()
    assert "connectome baseline" not in text.lower() and "id='connectome'" not in text
    assert (
        "<td>CNN inputs (channels)</td><td>T1w (1 channel)</td>" in text
    )  # no "inputs" in config: the T1w
    assert "Classification (out-of-fold)" in text


@pytest.mark.parametrize(
    "name, content",
    [
        ("metrics.json", '[{"epoch": 1, "loss": 0.7}]'),  # another tool's per-epoch metrics
        ("provenance.json", "[1, 2]"),
        ("provenance.json", '{"packages": ["numpy"]}'),
        ("confounds.json", '"site"'),
        ("splits.json", '{"folds": 3}'),
        ("attribution/gradcam/attribution.json", '{"subjects": ["sub-01"], "group": {}}'),
        ("attribution/gradcam/attribution.json", '{"subjects": [], "group": ["control"]}'),
        ("attribution/gradcam/attribution.json", '{"subjects": 5}'),
    ],
)
def test_a_file_of_another_format_is_skipped_not_a_traceback(tmp_path, rng, name, content):
    run = make_run(tmp_path, rng)
    (run / name).write_text(content)
    text = build_report(run).read_text()
    assert "id='trust'" in text and "id='model-card'" in text and "Model card not made" not in text
    assert (run / "model_card.md").is_file()


def test_subjects_table_and_per_subject_sections_show_the_same_method(tmp_path, rng):
    run = make_run(tmp_path, rng)  # gradcam, first by folder name
    folder = run / "attribution" / "region_occlusion"
    shutil.copytree(run / "attribution" / "gradcam", folder)
    doc = json.loads((folder / "attribution.json").read_text())
    doc["method"] = "region_occlusion"
    for s in doc["subjects"]:
        s["top_regions"] = [{"region": "Precuneus_L", "mean_attribution": 0.5}]
    (folder / "attribution.json").write_text(json.dumps(doc))
    text = build_report(run).read_text()
    subjects = text[text.index("id='subjects'") : text.index("id='per-subject'")]
    assert "Top 5 regions by mean region_occlusion attribution" in subjects
    assert "Precuneus_L" in subjects and "alert(1)&lt;/script&gt; (0.2500)" not in subjects
    assert "Per-subject attribution (region_occlusion)" in text


def test_report_needs_a_run_folder(tmp_path):
    with pytest.raises(InputError, match=r"not a neuroml run folder \(config.json missing\)"):
        build_report(tmp_path)


def test_report_refuses_a_model_folder_of_another_tool(tmp_path, capsys):
    from neuroml.cli import main

    (tmp_path / "config.json").write_text(
        json.dumps({"architectures": ["BertModel"], "hidden_size": 768})
    )
    with pytest.raises(InputError, match=r"config.json: not a neuroml run folder's config.json"):
        build_report(tmp_path)
    assert main(["-q", "report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "config.json") in err[0]
    assert not (tmp_path / "report.html").exists()


def test_figures_return_png():
    png = figures.roc_png({"a": {"fpr": [0, 0.5, 1], "tpr": [0, 1, 1]}}, {"a": 0.75})
    assert png[:4] == b"\x89PNG"
    assert figures.confusion_png([[2, 1], [0, 3]], ["a", "b"])[:4] == b"\x89PNG"
    img = nib.Nifti1Image(
        np.random.default_rng(0).random((7, 8, 9)).astype(np.float32), np.diag([8, 8, 8, 1.0])
    )
    assert figures.glass_brain_png(img)[:4] == b"\x89PNG"


def test_flat_region_map_still_gets_a_picture():
    """A region map whose non-zero voxels all share one tiny drop (a saturated prediction) is drawn, not empty."""
    import warnings

    from neuroml.io.templates import target_grid
    from neuroml.reports.attribution_sections import _threshold

    affine, shape = target_grid(8.0)
    data = np.zeros(shape, np.float32)
    data[5:12, 6:15, 5:12] = 3e-6  # one region's drop, everything else exactly 0
    thr = _threshold(data)
    assert 0 < thr < 3e-6
    assert _threshold(np.zeros(shape)) is None
    heavy = (
        np.random.default_rng(0).pareto(1.5, size=shape).astype(np.float32)
    )  # the usual case is unchanged
    vals = np.abs(heavy[heavy != 0])
    assert _threshold(heavy) == pytest.approx(max(np.percentile(vals, 75), 0.05 * vals.max()))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="empty mask")
        assert (
            figures.glass_brain_png(nib.Nifti1Image(data, affine), threshold=thr)[:4] == b"\x89PNG"
        )
    with (
        pytest.raises(UserWarning, match="empty mask"),
        warnings.catch_warnings(),
    ):  # what it replaced
        warnings.filterwarnings("error", message="empty mask")
        figures.glass_brain_png(nib.Nifti1Image(data, affine), threshold=3e-6)


_PROBE = """<script>
window.addEventListener("load", function () {
  var imgs = Array.from(document.images), tables = Array.from(document.querySelectorAll("table"));
  var shown = function (e) { var r = e.getBoundingClientRect(); return r.width > 0 && r.height > 0; };
  var out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify({
    images: imgs.length,
    decoded: imgs.filter(function (i) { return i.complete && i.naturalWidth > 50 && i.naturalHeight > 50; }).length,
    visible_images: imgs.filter(function (i) { return shown(i) || i.closest("details:not([open])"); }).length,
    tables: tables.length,
    visible_tables: tables.filter(function (t) { return shown(t) || t.closest("details:not([open])"); }).length});
  document.body.appendChild(out);
});
</script>"""


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium not installed")
def test_report_renders_in_headless_chromium(report, text, tmp_path):
    """Chromium decodes every embedded picture and lays out every table; the screenshot shows them."""
    exe = _chromium()
    args = [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1200,3000",
        "--virtual-time-budget=10000",
    ]
    n_images, n_tables = text.count("<img "), text.count("<table>")
    # a copy of the report with a probe script (the report itself has none) that reports what the browser decoded
    probe = tmp_path / "probe.html"
    probe.write_text(text.replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    dom = subprocess.run(
        args + ["--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120
    )
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom.stdout)
    assert found, dom.stderr[-2000:]
    seen = json.loads(found.group(1).replace("&quot;", '"'))
    assert seen == {
        "images": n_images,
        "decoded": n_images,
        "visible_images": n_images,
        "tables": n_tables,
        "visible_tables": n_tables,
    }
    assert n_images == 11 and n_tables >= 8

    shot = tmp_path / "shot.png"
    subprocess.run(
        args + [f"--screenshot={shot}", report.as_uri()], capture_output=True, timeout=120
    )
    from PIL import Image

    with Image.open(shot) as im:
        rgb = np.asarray(im.convert("RGB")).astype(int)
    assert rgb.shape == (3000, 1200, 3)
    assert rgb.std() > 10  # not a blank page
    # pictures bring colour (ROC lines, colour maps); text and table borders are grey
    colourful = (rgb.max(2) - rgb.min(2)) > 60
    assert colourful.sum() > 2000


def test_report_trust_checks_show_verdicts(text):
    trust = text[text.index("id='trust'") :]
    assert "model randomization: median |rho| = 0.400 over 3 subjects; FAILED" in trust
    assert "<li class='warn'>gradcam, model randomization" in trust
    assert (
        "<li class='ok'>gradcam, deletion: area 0.440 removing top-ranked regions first vs 0.800"
        in trust
    )
    assert "20.0x), voxel ROC AUC 0.930, 5/5 of the top regions planted" in trust
    assert "stability of class &lt;script&gt;" in trust
    assert "Attribution trust checks, method by method" in trust
    assert (
        re.search(r"<td>gradcam</td><td class=\"num\">0.400</td>", trust)
        or "<td>0.400</td>" in trust
    )
    assert 'alt="deletion curves of every method"' in trust


def test_model_card_gives_trust_verdicts_and_names_no_participant(report, text):
    """The card summarises sanity.json check by check (as the report does), never its subject list."""
    card = (report.parent / "model_card.md").read_text(encoding="utf-8")
    section = card[card.index("## Attribution trust checks") :]
    section = section[: section.index("\n## ", 1)] if "\n## " in section[1:] else section
    assert (
        "gradcam, model randomization: median \\|rho\\| = 0.400 over 3 subjects; FAILED" in section
    )  # | escaped
    assert (
        "gradcam, deletion: area 0.440 removing top-ranked regions first vs 0.800 in random order; PASSED"
        in section
    )
    assert "5/5 of the top regions planted; PASSED" in section and "regions in common" in section
    assert "sub-03" not in card and "sub-05" not in card and "'subjects'" not in card
    assert "sub-03" not in text[text.index("id='model-card'") :]


def test_undecided_randomization_is_neither_passed_nor_failed():
    from neuroml.reports.checks import check_lines

    lines = check_lines(
        "region_occlusion",
        {
            "randomization": {
                "rho": [None, None],
                "median_abs_rho": None,
                "passed": None,
                "n_constant": 2,
                "note": "every trained map is constant over the brain: the method found no signal to test",
                "rule": "r",
            }
        },
    )
    ((state, line),) = lines
    assert state == "na" and "not decided: every trained map is constant" in line
    assert "over 0 subjects (2 left out: constant trained map)" in line and "FAILED" not in line


def test_damaged_maps_become_notes_not_a_traceback(tmp_path, rng):
    """A truncated group map and a subject map that is not NIfTI: the report is still written,
    naming each file; a later `neuroml attribute` rerun would rewrite them."""
    from neuroml.cli import main

    run = make_run(tmp_path, rng)
    folder = run / "attribution" / "gradcam"
    doc = json.loads((folder / "attribution.json").read_text())
    group_map = folder / doc["group"]["control"]["mean_map"]
    group_map.write_bytes(group_map.read_bytes()[:200])  # truncated gzip
    subject_map = folder / doc["subjects"][0]["map"]
    subject_map.write_text("not an image")
    assert main(["-q", "report", str(run)]) == 0
    html = (run / "report.html").read_text(encoding="utf-8")
    for path in (group_map, subject_map):
        assert f"Map {path.name} could not be read (" in html
    assert html.count("could not be read") == 2 and "rerun <code>neuroml attribute</code>" in html


def test_a_sanity_json_of_another_call_is_not_reported(tmp_path, rng):
    """attribution.json and sanity.json must carry the same call_id (an earlier call's checks
    are not this call's)."""
    run = make_run(tmp_path, rng)
    folder = run / "attribution" / "gradcam"
    doc = json.loads((folder / "attribution.json").read_text())
    doc.update(call_id="new", sanity={"run": False, "reason": "--no-sanity"})
    (folder / "attribution.json").write_text(json.dumps(doc))
    (folder / "sanity.json").write_text(json.dumps({**SANITY, "call_id": "old"}))
    html = build_report(run).read_text(encoding="utf-8")
    card = (run / "model_card.md").read_text(encoding="utf-8")
    assert "model randomization: median" not in html and "model randomization: median" not in card
    assert "not computed by the call that made these maps (--no-sanity)." in html
    assert "ground truth): not computed (--no-sanity)." in card
    (folder / "sanity.json").write_text(json.dumps({**SANITY, "call_id": "new"}))
    assert "model randomization: median |rho| = 0.400" in build_report(run).read_text(
        encoding="utf-8"
    )


@pytest.mark.parametrize(
    "inputs, modality",
    [
        (None, "structural MRI carries"),
        (["alff", "reho"], "resting-state fMRI carries"),
        (["T1w", "alff"], "structural MRI and resting-state fMRI carries"),
    ],
)
def test_model_card_says_what_the_network_read(tmp_path, rng, inputs, modality):
    from neuroml.reports.model_card import model_card_text

    run = make_run(tmp_path, rng, attribution=False)
    if inputs:
        config = json.loads((run / "config.json").read_text())
        (run / "config.json").write_text(json.dumps({**config, "inputs": inputs}))
    text = model_card_text(run)
    assert f"Research: studying whether {modality}" in text
    assert f"| inputs (channels) | {', '.join(inputs or ['T1w'])} (" in text


def test_report_of_the_current_folder_is_titled_with_its_name(tmp_path, rng, monkeypatch):
    run = make_run(tmp_path, rng, attribution=False)
    monkeypatch.chdir(run)
    text = build_report(".").read_text()
    assert (
        "<title>neuroml report: run</title>" in text and "<td>run folder</td><td>run</td>" in text
    )
    assert (run / "model_card.md").read_text().startswith("# Model card: run\n")


def test_model_card_gives_the_permutation_test_when_the_run_has_one(tmp_path, rng):
    from neuroml.reports.model_card import model_card_text
    from neuroml.training.metrics import classification_report

    run = make_run(tmp_path, rng, attribution=False)
    assert (
        "No permutation test in this run (`neuroml train --n-permutations 1000`"
        in model_card_text(run)
    )
    metrics = json.loads((run / "metrics.json").read_text())
    y = np.repeat([0, 1], 20)
    metrics["cnn"] = classification_report(
        y, np.eye(2)[y] * 0.8 + 0.1, CLASSES, n_bootstrap=0, n_permutations=99
    )
    metrics["baseline"] = classification_report(
        y, np.full((40, 2), 0.5), CLASSES, n_bootstrap=0, n_permutations=99
    )
    (run / "metrics.json").write_text(json.dumps(metrics))
    text = model_card_text(run)
    # a perfect CNN beats every permutation: p = 1 / (1 + 99); a constant baseline none
    assert (
        "Permutation test of the balanced accuracy (99 label permutations of the out-of-fold predictions, "
        "the models not retrained): CNN p = 0.0100; baseline p = 1.0000."
    ) in text
