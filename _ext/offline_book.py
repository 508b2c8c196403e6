"""Keep the rendered book self-contained and free of console errors.

Jupyter Book always loads sphinx-thebe, which injects (twice, on rebuilds) an
inline script pointing at a CDN copy of thebe. The book has no live-code
buttons, so this extension drops thebe's scripts and stylesheet from every
page; MathJax is served locally by sphinx-mathjax-offline.
"""


def _is_thebe(asset) -> bool:
    name = str(getattr(asset, "filename", asset) or "")
    body = str(getattr(asset, "attributes", {}).get("body", "")) if hasattr(asset, "attributes") else ""
    return "thebe" in name.lower() or "thebe" in body.lower()


def _drop_thebe(app, pagename, templatename, context, doctree):
    # pydata-sphinx-theme logs a console error on a first visit when no default
    # colour mode is set; Jupyter Book does not pass the theme option through.
    context["default_mode"] = "light"
    for key in ("script_files", "css_files"):
        if key in context:
            context[key] = [a for a in context[key] if not _is_thebe(a)]


def setup(app):
    app.connect("html-page-context", _drop_thebe, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
