"""The documentation: the tutorial runs as written, the built site opens in a browser, and the
link checker of `.ci/docs` finds broken internal links."""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / "docs" / "tutorial.md"
SITE = ROOT / "docs" / "_build" / "html"


def tutorial_commands(text: str) -> list[str]:
    """The `$ ` lines of the page's ```console blocks, in order."""
    commands = []
    for block in re.findall(r"^```console\n(.*?)^```", text, flags=re.M | re.S):
        commands += [line[2:].strip() for line in block.splitlines() if line.startswith("$ ")]
    return commands


def test_tutorial_commands_are_found():
    commands = tutorial_commands(TUTORIAL.read_text(encoding="utf-8"))
    stages = [c.split()[1] for c in commands if c.startswith("neuroml ")]
    assert stages == ["preprocess", "preprocess", "train", "attribute", "report"], commands
    assert all("data_samples" in c for c in commands if c.startswith("neuroml preprocess"))


@pytest.mark.slow
def test_tutorial_runs_as_written(tmp_path):
    shutil.copytree(ROOT / "data_samples", tmp_path / "data_samples")
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    env.setdefault("MPLBACKEND", "Agg")
    bindir = Path(sys.executable).parent
    env["PATH"] = os.pathsep.join([str(bindir), env.get("PATH", "")])
    for command in tutorial_commands(TUTORIAL.read_text(encoding="utf-8")):
        done = subprocess.run(
            ["bash", "-c", command],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    study = tmp_path / "study"
    assert len(list((study / "derivatives").glob("sub-*/anat/*_desc-preproc_T1w.nii.gz"))) == 12
    assert (study / "derivatives" / "group_qc.html").is_file()
    assert not (study / "derivatives" / "failures.tsv").exists()
    assert len(list((study / "run").glob("fold-*/model.pt"))) == 3
    assert (study / "run" / "attribution" / "region_occlusion" / "sanity.json").is_file()
    report = (study / "run" / "report.html").read_text(encoding="utf-8")
    assert "Trust checks" in report


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_built_site_opens_in_chromium(tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium)")
    if not (SITE / "index.html").is_file():
        pytest.skip(
            f"the documentation is not built ({SITE}/index.html missing): run bash .ci/docs"
        )
    done = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            (SITE / "index.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    title = re.search(r"<title>(.*?)</title>", dom, flags=re.S)
    assert title and "neuroml" in title.group(1)
    nav = re.search(
        r'<div class="sphinxsidebar" role="navigation".*?</div>\s*</div>', dom, flags=re.S
    )
    assert nav, "no navigation sidebar in the rendered page"
    for entry in (
        "Installation",
        "Tutorial",
        "User guide",
        "Examples",
        "Python API",
        "Benchmarks",
        "Changelog",
    ):
        assert f">{entry}" in nav.group(0), f"{entry!r} missing from the navigation"
    for page in (
        "tutorial.html",
        "api.html",
        "benchmarks.html",
        "layout.html",
        "auto_examples/index.html",
    ):
        assert (SITE / page).is_file(), page


def _check_links():
    spec = importlib.util.spec_from_file_location("check_links", ROOT / "docs" / "check_links.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_link_checker_finds_broken_files_and_anchors(tmp_path):
    check_links = _check_links()
    (tmp_path / "sub").mkdir()
    (tmp_path / "index.html").write_text(
        '<a href="sub/page.html#here">ok</a> <a href="sub/page.html#gone">anchor</a>'
        ' <a href="missing.html">file</a> <a href="https://example.org/">external</a>'
        ' <a href="#top">self</a><h1 id="top">t</h1>'
    )
    (tmp_path / "sub" / "page.html").write_text(
        '<section id="here"></section><a href="../index.html">up</a>'
    )
    broken, internal, external = check_links.check(tmp_path)
    assert internal == 5 and external == 1
    assert sorted(broken) == [
        "index.html: missing.html (no file missing.html)",
        "index.html: sub/page.html#gone (no anchor #gone)",
    ]
    assert check_links.main(["check_links", str(tmp_path)]) == 1
    (tmp_path / "index.html").write_text('<a href="sub/page.html#here">ok</a>')
    assert check_links.main(["check_links", str(tmp_path)]) == 0
