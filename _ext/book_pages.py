"""Chapter pages a reader can take away, and no dead weight in any page.

* Every chapter page offers its executed notebook for download. The theme
  copies the notebook the build executed (``jupyter_execute/<page>.ipynb``)
  to ``_sources/<page>.ipynb`` and links it from the download menu; this
  extension makes that copy a notebook that runs elsewhere (a first cell that
  installs ``normlib`` from the book's repository when it is missing, as on
  Colab) and drops the widget state saved with it. It also puts a
  "Run this chapter" line at the top of the chapter, with the download link and
  the launch links (Binder, Colab) built from the one ``repository.url`` of
  ``_config.yml``. These are links only: the page loads nothing from them.
* Colab opens ``.ipynb`` files only, so the Colab link names the executed
  notebook as published with the site (``_sources/<page>.ipynb`` on the branch
  ``book_publish_branch``) instead of the MyST source. Binder builds the
  repository's ``environment.yml``, whose ``postBuild`` installs normlib and
  writes the chapters as ``notebooks/<name>.ipynb`` (as ``make lab`` does); the
  Binder link opens that notebook in JupyterLab.
* Widget state saved by the kernel (``application/vnd.jupyter.widget-state+json``)
  and the widget views that refer to it are removed from every page: the
  book loads no widget JavaScript, so they would only weigh the page down.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
WIDGET_VIEW_RE = re.compile(
    r'<script type="application/vnd\.jupyter\.widget-view\+json">.*?</script>', re.S)
SETUP_MARK = "normlib-setup-cell"


def _repository(app) -> tuple[str, str] | None:
    opts = app.config.html_theme_options or {}
    url = (opts.get("repository_url") or "").rstrip("/")
    m = re.match(r"https://github\.com/([^/]+)/([^/]+)$", url)
    if not m:
        return None
    return m.group(1), m.group(2)


def _setup_cell(app) -> dict:
    opts = app.config.html_theme_options or {}
    url = (opts.get("repository_url") or "").rstrip("/")
    branch = opts.get("repository_branch") or "main"
    source = (
        "# Outside the book's own environment (for example on Colab), install normlib and\n"
        "# the packages the chapters use from the book's repository first.\n"
        "import importlib.util, subprocess, sys\n"
        "if importlib.util.find_spec('normlib') is None:\n"
        "    subprocess.check_call([sys.executable, '-m', 'pip', 'install', '-q',\n"
        f"                           'normlib[book] @ git+{url}@{branch}'])"
    )
    return {"cell_type": "code", "execution_count": None, "id": SETUP_MARK,
            "metadata": {"tags": [SETUP_MARK]}, "outputs": [], "source": source}


def _has_outputs(nb: dict) -> bool:
    return any(c.get("outputs") for c in nb.get("cells", []) if c.get("cell_type") == "code")


def _outputs_from_cache(app, nb: dict) -> dict:
    """The notebook with the outputs of its execution, from the execution cache.

    myst-nb writes ``jupyter_execute/<page>.ipynb`` from the notebook as read,
    so when a page's outputs come from the cache that copy has none; they are
    merged in here from the same cache the build used.
    """
    import nbformat
    from jupyter_cache import get_cache

    cache_path = getattr(app.env, "mystnb_config", None)
    cache_path = getattr(cache_path, "execution_cache_path", None)
    if not cache_path or not Path(cache_path).exists():
        return nb
    node = nbformat.from_dict(nb)
    try:
        _, merged = get_cache(cache_path).merge_match_into_notebook(node)
    except KeyError:
        return nb
    return json.loads(nbformat.writes(merged))


def _prepare_notebook(app, path: Path) -> None:
    nb = json.loads(path.read_text(encoding="utf-8"))
    if not _has_outputs(nb):
        nb = _outputs_from_cache(app, nb)
    nb.get("metadata", {}).pop("widgets", None)
    for cell in nb.get("cells", []):
        cell.get("metadata", {}).pop("widgets", None)
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            data.pop(WIDGET_STATE, None)
    cells = nb.setdefault("cells", [])
    if not (cells and cells[0].get("id") == SETUP_MARK):
        cells.insert(0, _setup_cell(app))
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _colab_url(app, pagename: str) -> str | None:
    repo = _repository(app)
    if repo is None:
        return None
    base = ((app.config.html_theme_options or {}).get("launch_buttons", {}) or {}).get("colab_url", "")
    if not base:
        return None
    branch = app.config.book_publish_branch
    return f"{base.rstrip('/')}/github/{repo[0]}/{repo[1]}/blob/{branch}/_sources/{pagename}.ipynb"


def _binder_url(app, pagename: str) -> str | None:
    repo = _repository(app)
    opts = app.config.html_theme_options or {}
    base = (opts.get("launch_buttons", {}) or {}).get("binderhub_url", "")
    if repo is None or not base:
        return None
    branch = opts.get("repository_branch") or "main"
    # the repository's postBuild writes every chapter as notebooks/<name>.ipynb, as `make lab` does
    notebook = "notebooks/" + pagename.rsplit("/", 1)[-1] + ".ipynb"
    return f"{base.rstrip('/')}/v2/gh/{repo[0]}/{repo[1]}/{branch}?urlpath=lab/tree/{notebook}"


def _fix_header_buttons(buttons, urls: dict[str, str | None]) -> None:
    """Point the theme's launch buttons at the same notebooks as the page's own links."""
    for button in buttons or []:
        if isinstance(button, dict):
            if button.get("buttons"):
                _fix_header_buttons(button["buttons"], urls)
            for host, url in urls.items():
                if url and host in str(button.get("url", "")) and button.get("type") == "link":
                    button["url"] = url


def _run_banner(app, pagename: str, context: dict) -> str:
    pathto = context["pathto"]
    ipynb = pathto("_sources", 1) + f"/{pagename}.ipynb"
    links = [f'<a class="reference download" href="{html.escape(ipynb)}" download>'
             f"download the executed notebook (.ipynb)</a>"]
    binder = _binder_url(app, pagename)
    colab = _colab_url(app, pagename)
    if binder:
        links.append(f'<a class="reference external" href="{html.escape(binder)}">open it on Binder</a>')
    if colab:
        links.append(f'<a class="reference external" href="{html.escape(colab)}">open it in Colab</a>')
    return ('<p class="nl-run-chapter"><strong>Run this chapter:</strong> '
            + ", ".join(links)
            + ', or run it locally with <code>make lab</code> (see the preface).</p>\n')


def _page_context(app, pagename, templatename, context, doctree):
    for key in ("script_files",):
        if key in context:
            context[key] = [a for a in context[key]
                            if getattr(a, "attributes", {}).get("type") != WIDGET_STATE]
    body = context.get("body")
    if body and "widget-view+json" in body:
        context["body"] = WIDGET_VIEW_RE.sub("", body)
    if not pagename.startswith(app.config.book_chapter_prefix):
        return
    if context.get("ipynb_source"):
        path = Path(app.outdir) / "_sources" / context["ipynb_source"]
        if path.exists():
            _prepare_notebook(app, path)
            _fix_header_buttons(context.get("header_buttons"), {
                "colab.research.google.com": _colab_url(app, pagename),
                "mybinder.org": _binder_url(app, pagename)})
            banner = _run_banner(app, pagename, context)
            body = context.get("body", "")
            # after the chapter's title
            m = re.search(r"</h1>", body)
            context["body"] = body[:m.end()] + banner + body[m.end():] if m else banner + body


def setup(app):
    app.add_config_value("book_publish_branch", "gh-pages", "html")
    app.add_config_value("book_chapter_prefix", "chapters/", "html")
    # after the theme has built its launch and download buttons (priority 501)
    app.connect("html-page-context", _page_context, priority=950)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
