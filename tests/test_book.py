"""Checks of the book's sources that need no build: table of contents, chapter format, hygiene."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "chapters").glob("*.md"))


def _toc_files():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [c["file"] for c in part["chapters"]]
    return files


def test_every_toc_entry_exists_and_every_chapter_is_in_the_toc():
    files = _toc_files()
    for f in files:
        assert (ROOT / f"{f}.md").exists(), f"_toc.yml lists {f} but {f}.md is missing"
    listed = {f for f in files if f.startswith("chapters/")}
    for ch in CHAPTERS:
        assert f"chapters/{ch.stem}" in listed, f"{ch.name} is not in _toc.yml"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_is_a_myst_notebook_with_build_time_assertions(chapter):
    text = chapter.read_text()
    assert text.startswith("---\njupytext:"), "chapters start with a jupytext header"
    assert "format_name: myst" in text
    assert "```{code-cell} ipython3" in text
    hidden = re.findall(r"```\{code-cell\} ipython3\n:tags: \[remove-cell\]\n(.*?)```", text, re.S)
    assert any("assert" in cell for cell in hidden), "numbers in the prose need hidden assert cells"
    assert not re.search(r"^\s*[!%]pip", text, re.M), "no pip installs inside chapters"
    assert "urlretrieve" not in text and "requests.get" not in text, "chapters download nothing"


def test_no_notebook_outputs_are_committed():
    tracked = subprocess.run(["git", "ls-files", "chapters"], cwd=ROOT, capture_output=True, text=True)
    assert not [f for f in tracked.stdout.split() if f.endswith(".ipynb")]


def test_command_line_info_lists_normalizers():
    out = subprocess.run([sys.executable, "-m", "normlib", "info"], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    assert "normalizers:" in out.stdout and "bn" in out.stdout
