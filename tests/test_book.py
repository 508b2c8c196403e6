"""Checks of the book's sources that need no build: table of contents, chapter format, hygiene."""

import importlib
import pkgutil
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
        for c in part["chapters"]:
            files += [c["file"]] + [s["file"] for s in c.get("sections", [])]
    return files


def _public_modules():
    import normlib
    names = ["normlib"]
    for info in pkgutil.iter_modules(normlib.__path__):
        if not info.name.startswith("_"):
            names.append(f"normlib.{info.name}")
    return names


def test_api_reference_has_a_page_per_public_module_that_links_to_its_chapters():
    labels = set()
    for page in [*CHAPTERS, ROOT / "intro.md", *(ROOT / "docs").rglob("*.md")]:
        labels |= set(re.findall(r"^\(([\w-]+)\)=\s*$", page.read_text(), re.M))
    files = set(_toc_files())
    for module in _public_modules():
        page = ROOT / "docs" / "api" / f"{module.removeprefix('normlib.')}.md"
        assert page.exists(), f"{module} has no API page ({page.relative_to(ROOT)})"
        assert page.relative_to(ROOT).with_suffix("").as_posix() in files, f"{page.name} is not in _toc.yml"
        text = page.read_text()
        assert f"automodule:: {module}\n" in text, f"{page.name} does not document {module}"
        opening = text.split("```", 1)[0]
        refs = re.findall(r"\{ref\}`([\w-]+)`", opening)
        assert refs, f"{page.name} does not open with the chapters that explain {module}"
        for ref in refs:
            assert ref in labels, f"{page.name} refers to {ref}, which no page defines"
        package = importlib.import_module(module)
        for info in pkgutil.iter_modules(getattr(package, "__path__", [])):
            if not info.name.startswith("_") and module != "normlib":
                assert f"automodule:: {module}.{info.name}\n" in text \
                    or f"py:module:: {module}.{info.name}\n" in text, \
                    f"{page.name} does not list the module {module}.{info.name}"


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
