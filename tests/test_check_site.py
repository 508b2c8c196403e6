"""The browser check fails on what it must fail on: a small site with one good and
one bad chapter, checked in the same Chromium as the book (needs Debian's chromium)."""

from __future__ import annotations

import json
import struct
import sys
import zlib
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import check_site  # noqa: E402

pytestmark = pytest.mark.site_check  # run by `make site-check`, beside the check itself

SVG = ('<svg xmlns="http://www.w3.org/2000/svg" width="{w}pt" height="100pt" viewBox="0 0 {w} 100">'
       '<rect width="{w}" height="100" fill="#ccc"/></svg>')


def png(width: int, height: int, dpi: float | None) -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    if dpi:
        ppm = round(dpi / 0.0254)
        out += chunk(b"pHYs", struct.pack(">IIB", ppm, ppm, 1))
    return out + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def page(body: str) -> str:
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><style>"
            "article{width:700px} img{max-width:100%}</style></head>"
            f"<body><article class='bd-article'>{body}</article></body></html>")


FIGURE = ("<figure id=\"fig-{n}\"><img src='../_images/{src}' alt='{alt}'>"
          "<figcaption><p><span class='caption-number'>Fig. {n} </span>"
          "<span class='caption-text'>{caption}</span></p></figcaption></figure>")
EXERCISES = "".join(
    f"<div class='admonition exercise' id=\"ex-{i}\"><p class='admonition-title'>Exercise {i}</p></div>"
    f"<div class='admonition solution dropdown'><p class='admonition-title'>Solution to "
    f"<a class='reference internal' href='#ex-{i}'>Exercise {i}</a></p></div>" for i in (1, 2, 3))
EXPLORER = ("<div class='nl-explorer'><input type='range' min='0' max='2' value='0' aria-label='depth'>"
            "<select aria-label='norm'><option>bn</option><option>gn</option></select>"
            "<div class='nl-explorer-view'>{view}</div></div>"
            "<script>{script}</script>")
LIVE = ("const ex = document.currentScript.previousElementSibling;"
        "const v = ex.querySelector('.nl-explorer-view');"
        "const draw = () => { v.innerHTML = [...ex.querySelectorAll('input,select')]"
        ".map(c => c.value).join('/'); };"
        "ex.querySelectorAll('input,select').forEach(c => c.addEventListener('input', draw)); draw();")
LINKS = ("<p><a href='../_sources/chapters/{name}.ipynb' download>notebook</a> "
         "<a href='https://mybinder.org/v2/gh/o/r/main'>Binder</a> "
         "<a href='https://colab.research.google.com/github/o/r/blob/x.ipynb'>Colab</a></p>")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    if check_site.find_chromium() is None:
        pytest.fail("the browser check needs Debian's chromium (apt-get install chromium)")
    root = tmp_path_factory.mktemp("site") / "html"
    (root / "chapters").mkdir(parents=True)
    (root / "_images").mkdir()
    (root / "_sources" / "chapters").mkdir(parents=True)
    (root / "index.html").write_text(page("<h1>Book</h1><a href='chapters/good.html'>good</a>"))
    (root / "_images" / "ok.svg").write_text(SVG.format(w=450))        # 600 CSS px
    (root / "_images" / "wide.svg").write_text(SVG.format(w=900))      # 1200 CSS px into 700
    (root / "_images" / "retina.png").write_bytes(png(1200, 10, 192))  # 600 CSS px
    (root / "_images" / "raw.png").write_bytes(png(1200, 10, None))    # 1200 CSS px into 700
    (root / "_images" / "heavy.bin").write_bytes(b"x")
    executed = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        {"cell_type": "code", "source": "1", "metadata": {}, "execution_count": 1,
         "outputs": [{"output_type": "execute_result", "data": {"text/plain": "1"}, "metadata": {},
                      "execution_count": 1}]}]}
    (root / "_sources" / "chapters" / "good.ipynb").write_text(json.dumps(executed))
    bare = dict(executed, cells=[dict(executed["cells"][0], outputs=[], execution_count=None)])
    (root / "_sources" / "chapters" / "bad.ipynb").write_text(json.dumps(bare))
    good = ("<h1>Good</h1>" + LINKS.format(name="good")
            + FIGURE.format(n=1, src="ok.svg", alt="Two curves that meet at depth ten", caption="Curves.")
            + FIGURE.format(n=2, src="retina.png", alt="A grey band across the panel", caption="Band.")
            + EXPLORER.format(view="", script=LIVE)
            + "<section><h2>1.4. Summary</h2><ul><li>one</li></ul></section>" + EXERCISES)
    bad = ("<h1>Bad</h1>" + LINKS.format(name="bad")
           + FIGURE.format(n=1, src="wide.svg", alt="../_images/wide.svg", caption="Wide.")
           + "<figure><img src='../_images/raw.png' alt='raw.png'></figure>"
           + "<img src='../_images/ok.svg' alt='A loose image with no figure around it'>"
           + EXPLORER.format(view="<img alt='frame'>", script="")
           + "<h2>Exercises</h2>" + EXERCISES.replace("href='#ex-3'", "href='#ex-9'")
           + "<!--" + "x" * 1_600_000 + "-->")
    (root / "chapters" / "good.html").write_text(page(good))
    (root / "chapters" / "bad.html").write_text(page(bad))
    # the motivation chapter must hold an explorer
    (root / "chapters" / "motivation.html").write_text(page(good.replace(
        EXPLORER.format(view="", script=LIVE), "").replace("good.ipynb", "good.ipynb")))
    problems = check_site.check(root)
    return root, problems


def _of(problems, name):
    return [p for p in problems if p.startswith(f"chapters/{name}.html:")]


def test_a_good_chapter_passes(site):
    _, problems = site
    assert _of(problems, "good") == []


def test_a_bad_chapter_fails_on_every_rule(site):
    _, problems = site
    bad = "\n".join(_of(problems, "bad"))
    expected = [
        "figure (no id) has no number", "figure (no id) has no caption",
        "image ../_images/ok.svg is not in a numbered, captioned figure",
        "has alt text '../_images/wide.svg'", "has alt text 'raw.png'",
        "image ../_images/wide.svg is shown", "of the 1200 px it was drawn for",
        "image ../_images/raw.png is shown",
        "moving depth does not change the picture", "moving norm does not change the picture",
        "chapter has no Summary section", "chapter has 2 exercises with solutions",
        "download ../_sources/chapters/bad.ipynb has no outputs", "page weighs 1.",
    ]
    for text in expected:
        assert text in bad, f"the check did not report {text!r}:\n{bad}"


def test_required_explorer_and_screenshots(site):
    root, problems = site
    assert "chapters/motivation.html: chapter has no static explorer (div.nl-explorer)" in problems
    shots = root.parent / "screenshots"
    assert {p.name for p in shots.glob("*.png")} == {"good.png", "bad.png", "motivation.png"}
