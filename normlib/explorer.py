"""Explorers that work in a static HTML page: precomputed views and a small JavaScript viewer.

A :class:`StaticExplorer` holds one *view* (a few panels of lines, and a paragraph of text)
for every combination of its controls' values, all computed when the page is built. Its HTML
(:meth:`StaticExplorer.to_html`, also the notebook's rich display) holds the controls
(``<input type="range">`` sliders that print their value, ``<select>`` menus), the views as
compact JSON, and about 8 KB of plain JavaScript that draws the chosen view as inline SVG
(axes, ticks, log scales, a legend) whenever a control moves. Nothing is loaded from another
host, no kernel or server is needed, and the page works when opened from ``file://``.

DOM convention (the book's browser check relies on it): the root element is a
``div.nl-explorer`` with a page-unique ``id``; its controls are the ``input[type=range]`` and
``select`` elements inside it; the picture is the element of class ``nl-explorer-view``, whose
content is redrawn on every move of a control (it also names the current setting, so that it
changes even when a control does not apply to the current choice).

The explorers of the book are built in :mod:`normlib.widgets` from precomputed profiles;
chapters import this module and :mod:`normlib.widgets`, nothing else does.

Example:
    >>> from normlib.explorer import Control, Line, Panel, StaticExplorer
    >>> e = StaticExplorer("powers", [Control("p", "power", (1, 2, 3))],
    ...                    [Panel("y = x^p", "x", "y", ylog=True)])
    >>> for p in (1, 2, 3):
    ...     e.add_view({"p": p}, [[Line([1, 2, 3], [x ** p for x in (1, 2, 3)], label=f"p={p}")]])
    >>> html = e.to_html()
    >>> html.count('type="range"'), 'class="nl-explorer-view"' in html, len(e.views)
    (1, True, 3)
"""

from __future__ import annotations

import hashlib
import html as _html
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Control", "Panel", "Line", "StaticExplorer", "compact", "MARKERS"]

#: Marker symbols the viewer draws (matplotlib's letters); others are drawn as circles.
MARKERS = ("o", "s", "^", "v", "D", "x", "*", "+")
_KINDS = ("range", "select")
_COUNTER = itertools.count()


def compact(values, digits: int = 4) -> list:
    """``values`` as a list of floats rounded to ``digits`` significant digits (None if not finite).

    Example:
        >>> compact([3.14159265, float("nan"), 12345.678, 0.0])
        [3.142, None, 12350.0, 0.0]
    """
    out = []
    for v in values:
        v = float(v)
        out.append(float(f"{v:.{digits}g}") if math.isfinite(v) else None)
    return out


@dataclass(frozen=True)
class Control:
    """One control of an explorer.

    Args:
        name: the key of the control in :meth:`StaticExplorer.add_view`.
        label: what the reader sees next to it.
        values: the precomputed values, in slider order (at least two).
        kind: ``"range"`` (a slider over the values, printing the current one) or ``"select"``.
        labels: how each value is printed (default ``str(value)``).
        default: the initial value (default the first).
        note: a short remark printed after the label (for example which choice it applies to).
    """

    name: str
    label: str
    values: tuple
    kind: str = "range"
    labels: tuple | None = None
    default: object = None
    note: str = ""

    def __post_init__(self):
        values = tuple(self.values)
        object.__setattr__(self, "values", values)
        if len(values) < 2:
            raise ValueError(f"control {self.name!r} needs at least two values, got {values!r}")
        if len({str(v) for v in values}) != len(values):
            raise ValueError(f"control {self.name!r} has repeated values {values!r}")
        if self.kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {self.kind!r}")
        if self.labels is not None:
            labels = tuple(str(label) for label in self.labels)
            object.__setattr__(self, "labels", labels)
            if len(labels) != len(values):
                raise ValueError(f"control {self.name!r}: {len(labels)} labels for {len(values)} values")
        if self.default is not None and str(self.default) not in {str(v) for v in values}:
            raise ValueError(f"default {self.default!r} of control {self.name!r} is not among {values!r}")

    @property
    def shown(self) -> tuple:
        """The printed labels of the values."""
        return self.labels if self.labels is not None else tuple(str(v) for v in self.values)

    @property
    def default_index(self) -> int:
        if self.default is None:
            return 0
        return [str(v) for v in self.values].index(str(self.default))


@dataclass(frozen=True)
class Panel:
    """The axes of one panel (the same in every view; limits may be set per view).

    ``width`` and ``height`` are CSS pixels: three panels of 210 fit the book's column.
    """

    title: str
    xlabel: str
    ylabel: str
    xlog: bool = False
    ylog: bool = False
    width: int = 210
    height: int = 200
    xlim: tuple | None = None
    ylim: tuple | None = None


@dataclass
class Line:
    """One polyline (and/or its markers) of a panel.

    Args:
        x, y: the points; a missing point (None, NaN, infinite, or not positive on a log axis)
            breaks the line.
        color: CSS color.
        label: legend entry (lines with the same label share one entry).
        width: stroke width in pixels (0: markers only).
        dash: SVG dash pattern such as ``"4 3"``.
        marker: one of :data:`MARKERS` or None.
        size: marker size in pixels.
        opacity: stroke opacity.
    """

    x: Sequence[float]
    y: Sequence[float]
    color: str = "#333333"
    label: str | None = None
    width: float = 1.6
    dash: str | None = None
    marker: str | None = None
    size: float = 5.0
    opacity: float = 1.0

    def __post_init__(self):
        if len(self.x) != len(self.y):
            raise ValueError(f"x has {len(self.x)} points, y has {len(self.y)}")
        if self.marker is not None and self.marker not in MARKERS:
            raise ValueError(f"marker must be one of {MARKERS} or None, got {self.marker!r}")


class StaticExplorer:
    """Precomputed views behind sliders and menus, shown as self-contained HTML.

    Args:
        title: a heading shown above the controls.
        controls: the :class:`Control` objects, in the order shown.
        panels: the :class:`Panel` objects of every view.
        digits: significant digits kept of every coordinate (3: a thousandth of a panel).

    Attributes:
        views: ``{key: view}`` with ``key`` the tuple of the controls' values (as strings).
    """

    def __init__(self, title: str, controls: Sequence[Control], panels: Sequence[Panel], *,
                 digits: int = 3):
        self.title = title
        self.controls = list(controls)
        self.panels = list(panels)
        if not self.controls:
            raise ValueError("an explorer needs at least one control")
        if not self.panels:
            raise ValueError("an explorer needs at least one panel")
        names = [c.name for c in self.controls]
        if len(set(names)) != len(names):
            raise ValueError(f"control names must be unique, got {names}")
        self.digits = digits
        self.views: dict[tuple, dict] = {}
        self._arrays: dict[str, int] = {}
        self._series: dict[tuple, int] = {}
        self._texts: dict[str, int] = {}
        self._styles: dict[str, int] = {}

    # -- building -------------------------------------------------------------------------

    def key(self, values: Mapping) -> tuple:
        """The view key of ``{control name: value}``; every control must be given a known value."""
        missing = [c.name for c in self.controls if c.name not in values]
        extra = sorted(set(values) - {c.name for c in self.controls})
        if missing or extra:
            raise ValueError(f"values must name exactly the controls {[c.name for c in self.controls]}; "
                             f"missing {missing}, unknown {extra}")
        key = []
        for c in self.controls:
            value = str(values[c.name])
            if value not in {str(v) for v in c.values}:
                raise ValueError(f"{value!r} is not a value of control {c.name!r}: {c.values!r}")
            key.append(value)
        return tuple(key)

    def _array_index(self, values) -> int:
        data = json.dumps(compact(values, self.digits), separators=(",", ":"))
        return self._arrays.setdefault(data, len(self._arrays))

    def _series_index(self, line: Line) -> int:
        pair = (self._array_index(line.x), self._array_index(line.y))
        return self._series.setdefault(pair, len(self._series))

    def _style_index(self, line: Line) -> int:
        style = json.dumps([line.color, round(float(line.width), 2), line.dash, line.marker,
                            round(float(line.size), 2), round(float(line.opacity), 3), line.label],
                           separators=(",", ":"))
        return self._styles.setdefault(style, len(self._styles))

    def add_view(self, values: Mapping, lines: Sequence[Sequence[Line]], text: str = "",
                 limits: Sequence | None = None) -> None:
        """Add the view shown when the controls are at ``values``.

        Args:
            values: ``{control name: value}``.
            lines: one list of :class:`Line` per panel.
            text: HTML shown below the panels (build it with escaped text).
            limits: per panel ``None`` or ``(xlim, ylim)``, each ``None`` or ``(lo, hi)``;
                unset limits fit the view's lines (and the panel's own limits win over both).
        """
        key = self.key(values)
        if len(lines) != len(self.panels):
            raise ValueError(f"lines must hold one list per panel ({len(self.panels)}), got {len(lines)}")
        limits = list(limits) if limits is not None else [None] * len(self.panels)
        if len(limits) != len(self.panels):
            raise ValueError(f"limits must hold one entry per panel ({len(self.panels)}), got {len(limits)}")
        panels, lims = [], []
        for panel_lines, lim, panel in zip(lines, limits, self.panels):
            panels.append([[self._series_index(line), self._style_index(line)] for line in panel_lines])
            xlim, ylim = (lim if lim is not None else (None, None))
            xlim, ylim = panel.xlim or xlim, panel.ylim or ylim
            lims.append([*(compact(xlim, 6) if xlim else [None, None]),
                         *(compact(ylim, 6) if ylim else [None, None])])
        text_index = self._texts.setdefault(str(text), len(self._texts))
        self.views[key] = {"p": panels, "l": lims, "t": text_index}

    def missing(self) -> list[tuple]:
        """The combinations of control values that have no view yet."""
        every = itertools.product(*[[str(v) for v in c.values] for c in self.controls])
        return [k for k in every if k not in self.views]

    # -- output ---------------------------------------------------------------------------

    def data(self) -> dict:
        """The JSON-ready data the viewer reads (views deduplicated)."""
        missing = self.missing()
        if missing:
            raise ValueError(f"{len(missing)} combinations of the controls have no view, "
                             f"for example {missing[0]}; add_view them")
        view_index: dict[str, int] = {}
        views, keys = [], {}
        for key, view in self.views.items():
            text = json.dumps(view, separators=(",", ":"), sort_keys=True)
            if text not in view_index:
                view_index[text] = len(views)
                views.append(view)
            keys["|".join(key)] = view_index[text]
        arrays = [json.loads(a) for a in self._arrays]
        series = [list(pair) for pair in self._series]
        styles = [json.loads(s) for s in self._styles]
        return {
            "controls": [{"name": c.name, "label": c.label, "values": [str(v) for v in c.values],
                          "shown": list(c.shown)} for c in self.controls],
            "panels": [{"title": p.title, "xlabel": p.xlabel, "ylabel": p.ylabel, "xlog": p.xlog,
                        "ylog": p.ylog, "w": p.width, "h": p.height} for p in self.panels],
            "arrays": arrays,
            "series": series,
            "styles": styles,
            "texts": list(self._texts),
            "views": views,
            "keys": keys,
        }

    def to_html(self) -> str:
        """The explorer as one self-contained HTML fragment (controls, data and viewer)."""
        payload = json.dumps(self.data(), separators=(",", ":"), allow_nan=False)
        # Nothing in the JSON may close the script element it sits in.
        payload = payload.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
        digest = hashlib.sha1(payload.encode()).hexdigest()[:8]
        uid = f"nl-explorer-{next(_COUNTER)}-{digest}"
        rows = []
        for i, c in enumerate(self.controls):
            cid = f"{uid}-c{i}"
            note = f' <span class="nl-note">({_html.escape(c.note)})</span>' if c.note else ""
            label = f'<label for="{cid}">{_html.escape(c.label)}{note}</label>'
            if c.kind == "range":
                widget = (f'<input type="range" id="{cid}" data-control="{i}" min="0" '
                          f'max="{len(c.values) - 1}" step="1" value="{c.default_index}">'
                          f'<output id="{cid}-value" for="{cid}">'
                          f'{_html.escape(c.shown[c.default_index])}</output>')
            else:
                options = "".join(
                    f'<option value="{j}"{" selected" if j == c.default_index else ""}>'
                    f'{_html.escape(s)}</option>' for j, s in enumerate(c.shown))
                widget = f'<select id="{cid}" data-control="{i}">{options}</select>'
            rows.append(f'<div class="nl-control">{label}{widget}</div>')
        return (
            f'<div class="nl-explorer" id="{uid}">'
            f"<style>{_CSS}</style>"
            f'<div class="nl-title">{_html.escape(self.title)}</div>'
            f'<div class="nl-controls">{"".join(rows)}</div>'
            f'<div class="nl-explorer-view" aria-live="polite">'
            f"<p>This explorer needs JavaScript to draw its panels.</p></div>"
            f'<script type="application/json" class="nl-explorer-data">{payload}</script>'
            f'<script>{_JS.replace("__UID__", uid)}</script>'
            f"</div>"
        )

    def _repr_html_(self) -> str:
        return self.to_html()

    def __repr__(self) -> str:
        return (f"StaticExplorer({self.title!r}, controls={[c.name for c in self.controls]}, "
                f"views={len(self.views)})")


_CSS = (
    ".nl-explorer{border:1px solid #ccc;border-radius:4px;padding:8px 10px;margin:1em 0;"
    "background:#fff;color:#222;font-family:system-ui,-apple-system,'Segoe UI',sans-serif;"
    "font-size:13px;max-width:100%;box-sizing:border-box}"
    ".nl-explorer .nl-title{font-weight:600;margin-bottom:4px}"
    ".nl-explorer .nl-controls{display:flex;flex-wrap:wrap;gap:4px 18px;margin-bottom:6px}"
    ".nl-explorer .nl-control{display:flex;align-items:center;gap:6px}"
    ".nl-explorer .nl-control input[type=range]{width:110px}"
    ".nl-explorer .nl-control output{min-width:2.5em;font-variant-numeric:tabular-nums;font-weight:600}"
    ".nl-explorer .nl-note{color:#666;font-size:12px}"
    ".nl-explorer .nl-setting{color:#444;font-size:12px;margin:2px 0}"
    ".nl-explorer .nl-legend{display:flex;flex-wrap:wrap;gap:2px 14px;font-size:12px;margin:2px 0}"
    ".nl-explorer .nl-legend span{display:inline-flex;align-items:center;gap:4px}"
    ".nl-explorer .nl-panels{display:flex;flex-wrap:wrap;gap:4px}"
    ".nl-explorer .nl-panels svg{display:block;overflow:visible}"
    ".nl-explorer .nl-text{margin-top:4px;font-size:13px}"
    ".nl-explorer .nl-text table{border-collapse:collapse;margin:0;font-size:12px}"
    ".nl-explorer .nl-text td,.nl-explorer .nl-text th{padding:1px 8px 1px 0;border:none;"
    "text-align:left;background:none}"
    ".nl-explorer .nl-ok{color:#1a7f37}.nl-explorer .nl-warning{color:#9a6700}"
    ".nl-explorer .nl-failure{color:#cf222e}"
)

# The viewer: plain ES5, no library. __UID__ is replaced by the explorer's id.
_JS = r"""
(function () {
  "use strict";
  var script = document.currentScript;
  var root = (script && script.parentNode && script.parentNode.classList &&
              script.parentNode.classList.contains("nl-explorer")) ? script.parentNode
             : document.getElementById("__UID__");
  if (!root) { return; }
  var data = JSON.parse(root.querySelector("script.nl-explorer-data").textContent);
  var view = root.querySelector(".nl-explorer-view");
  var inputs = root.querySelectorAll("[data-control]");
  function series(i) { var s = data.series[i]; return [data.arrays[s[0]], data.arrays[s[1]]]; }
  var ML = 48, MR = 8, MT = 20, MB = 34;

  function esc(s) {
    return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
                    .replace(/"/g, "&quot;");
  }
  function fmt(v) {
    if (v === 0) { return "0"; }
    var a = Math.abs(v);
    if (a >= 1e4 || a < 1e-3) {
      var e = Math.floor(Math.log(a) / Math.LN10 + 1e-9), m = v / Math.pow(10, e);
      m = parseFloat(m.toPrecision(2));
      return (m === 1 ? "" : (m === -1 ? "-" : m + "\u00d7")) + "10<tspan dy='-5' font-size='9'>" +
             e + "</tspan>";
    }
    return String(parseFloat(v.toPrecision(3)));
  }
  function niceStep(span, n) {
    var raw = span / n, p = Math.pow(10, Math.floor(Math.log(raw) / Math.LN10)), f = raw / p;
    return p * (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10);
  }
  function linearTicks(lo, hi, n) {
    var step = niceStep(hi - lo, n), out = [], t = Math.ceil(lo / step - 1e-9) * step;
    for (; t <= hi + step * 1e-9; t += step) { out.push(Math.abs(t) < step * 1e-9 ? 0 : t); }
    return out;
  }
  function logTicks(lo, hi) {
    var a = Math.floor(Math.log(lo) / Math.LN10), b = Math.ceil(Math.log(hi) / Math.LN10);
    var out = [], k, every = Math.max(1, Math.ceil((b - a) / 5));
    for (k = a; k <= b; k += every) {
      var t = Math.pow(10, k);
      if (t >= lo * (1 - 1e-9) && t <= hi * (1 + 1e-9)) { out.push(t); }
    }
    if (out.length < 2) {
      var m, c = [1, 2, 5];
      out = [];
      for (k = a; k <= b; k++) {
        for (m = 0; m < 3; m++) {
          var u = c[m] * Math.pow(10, k);
          if (u >= lo * (1 - 1e-9) && u <= hi * (1 + 1e-9)) { out.push(u); }
        }
      }
      if (out.length < 2) { out = linearTicks(lo, hi, 3).filter(function (t) { return t > 0; }); }
    }
    return out;
  }
  function ok(v, log) { return v !== null && isFinite(v) && (!log || v > 0); }
  function limits(vw, pi, panel) {
    var lim = vw.l[pi], xs = [], ys = [], i, j;
    var lines = vw.p[pi];
    for (i = 0; i < lines.length; i++) {
      var s = series(lines[i][0]);
      for (j = 0; j < s[0].length; j++) {
        if (ok(s[0][j], panel.xlog) && ok(s[1][j], panel.ylog)) { xs.push(s[0][j]); ys.push(s[1][j]); }
      }
    }
    function fit(vals, lo, hi, log) {
      var a = lo, b = hi;
      if (a === null || b === null) {
        var mn = Infinity, mx = -Infinity;
        for (var k = 0; k < vals.length; k++) {
          if ((lo === null || vals[k] >= lo) && (hi === null || vals[k] <= hi)) {
            mn = Math.min(mn, vals[k]); mx = Math.max(mx, vals[k]);
          }
        }
        if (!isFinite(mn)) { mn = log ? 0.1 : 0; mx = log ? 10 : 1; }
        if (log) {
          var la = Math.log(mn), lb = Math.log(mx), pad = (lb - la) * 0.05 || 0.5;
          if (a === null) { a = Math.exp(la - pad); }
          if (b === null) { b = Math.exp(lb + pad); }
        } else {
          var padl = (mx - mn) * 0.05 || Math.abs(mx) * 0.1 || 1;
          if (a === null) { a = mn - padl; }
          if (b === null) { b = mx + padl; }
        }
      }
      return [a, b];
    }
    return [fit(xs, lim[0], lim[1], panel.xlog), fit(ys, lim[2], lim[3], panel.ylog)];
  }
  // Liang-Barsky: the part of segment p-q inside the box, or null.
  function clip(p, q, x0, x1, y0, y1) {
    var t0 = 0, t1 = 1, dx = q[0] - p[0], dy = q[1] - p[1];
    var ps = [-dx, dx, -dy, dy], qs = [p[0] - x0, x1 - p[0], p[1] - y0, y1 - p[1]];
    for (var i = 0; i < 4; i++) {
      if (ps[i] === 0) { if (qs[i] < 0) { return null; } continue; }
      var r = qs[i] / ps[i];
      if (ps[i] < 0) { if (r > t1) { return null; } if (r > t0) { t0 = r; } }
      else { if (r < t0) { return null; } if (r < t1) { t1 = r; } }
    }
    return [[p[0] + t0 * dx, p[1] + t0 * dy], [p[0] + t1 * dx, p[1] + t1 * dy]];
  }
  function marker(m, x, y, r, color) {
    var a = 'fill="' + color + '" stroke="' + color + '"';
    if (m === "s") { return '<rect x="' + (x - r * 0.85) + '" y="' + (y - r * 0.85) + '" width="' +
        1.7 * r + '" height="' + 1.7 * r + '" ' + a + '/>'; }
    if (m === "^" || m === "v") {
      var d = m === "^" ? 1 : -1;
      return '<path d="M' + x + ',' + (y - d * r) + 'L' + (x + r) + ',' + (y + d * r * 0.8) + 'L' +
          (x - r) + ',' + (y + d * r * 0.8) + 'Z" ' + a + '/>';
    }
    if (m === "D") { return '<path d="M' + x + ',' + (y - r) + 'L' + (x + r) + ',' + y + 'L' + x +
        ',' + (y + r) + 'L' + (x - r) + ',' + y + 'Z" ' + a + '/>'; }
    if (m === "x" || m === "+") {
      var k = m === "x" ? r * 0.8 : r;
      var path = m === "x"
        ? "M" + (x - k) + "," + (y - k) + "L" + (x + k) + "," + (y + k) + "M" + (x - k) + "," + (y +
            k) + "L" + (x + k) + "," + (y - k)
        : "M" + (x - k) + "," + y + "L" + (x + k) + "," + y + "M" + x + "," + (y - k) + "L" + x + "," +
            (y + k);
      return '<path d="' + path + '" stroke="' + color + '" stroke-width="1.5" fill="none"/>';
    }
    if (m === "*") {
      var pts = [];
      for (var i = 0; i < 10; i++) {
        var ang = Math.PI / 2 + i * Math.PI / 5, rr = i % 2 ? r * 0.45 : r * 1.2;
        pts.push((x + rr * Math.cos(ang)).toFixed(1) + "," + (y - rr * Math.sin(ang)).toFixed(1));
      }
      return '<polygon points="' + pts.join(" ") + '" ' + a + '/>';
    }
    return '<circle cx="' + x + '" cy="' + y + '" r="' + r * 0.75 + '" ' + a + '/>';
  }
  function panelSvg(vw, pi) {
    var panel = data.panels[pi], W = panel.w, Hh = panel.h;
    var lim = limits(vw, pi, panel), xl = lim[0], yl = lim[1];
    var x0 = ML, x1 = W - MR, y0 = MT, y1 = Hh - MB;
    function tr(v, l, log, a, b) {
      var t = log ? (Math.log(v) - Math.log(l[0])) / (Math.log(l[1]) - Math.log(l[0]))
                  : (v - l[0]) / (l[1] - l[0]);
      return a + t * (b - a);
    }
    function X(v) { return tr(v, xl, panel.xlog, x0, x1); }
    function Y(v) { return tr(v, yl, panel.ylog, y1, y0); }
    var o = ['<svg width="' + W + '" height="' + Hh + '" viewBox="0 0 ' + W + " " + Hh +
             '" font-size="10" role="img" aria-label="' + esc(panel.title) + '">'];
    o.push('<rect x="' + x0 + '" y="' + y0 + '" width="' + (x1 - x0) + '" height="' + (y1 - y0) +
        '" fill="#fff" stroke="#999" stroke-width="0.8"/>');
    var xt = panel.xlog ? logTicks(xl[0], xl[1]) : linearTicks(xl[0], xl[1], 4);
    var yt = panel.ylog ? logTicks(yl[0], yl[1]) : linearTicks(yl[0], yl[1], 4);
    var i, j, px;
    for (i = 0; i < xt.length; i++) {
      px = X(xt[i]).toFixed(1);
      o.push('<line x1="' + px + '" x2="' + px + '" y1="' + y0 + '" y2="' + y1 + '" stroke="#e5e5e5"/>');
      o.push('<line x1="' + px + '" x2="' + px + '" y1="' + y1 + '" y2="' + (y1 + 4) + '" stroke="#666"/>');
      o.push('<text x="' + px + '" y="' + (y1 + 15) + '" text-anchor="middle" fill="#333">' +
          fmt(xt[i]) + "</text>");
    }
    for (i = 0; i < yt.length; i++) {
      px = Y(yt[i]).toFixed(1);
      o.push('<line y1="' + px + '" y2="' + px + '" x1="' + x0 + '" x2="' + x1 + '" stroke="#e5e5e5"/>');
      o.push('<line y1="' + px + '" y2="' + px + '" x1="' + (x0 - 4) + '" x2="' + x0 + '" stroke="#666"/>');
      o.push('<text x="' + (x0 - 6) + '" y="' + (parseFloat(px) + 3.5) +
          '" text-anchor="end" fill="#333">' + fmt(yt[i]) + "</text>");
    }
    var lines = vw.p[pi];
    for (i = 0; i < lines.length; i++) {
      var s = series(lines[i][0]), st = data.styles[lines[i][1]];
      var color = st[0], width = st[1], dash = st[2], mk = st[3], size = st[4], op = st[5];
      var pts = [];
      for (j = 0; j < s[0].length; j++) {
        pts.push(ok(s[0][j], panel.xlog) && ok(s[1][j], panel.ylog) ? [X(s[0][j]), Y(s[1][j])] : null);
      }
      if (width > 0) {
        var d = "", last = null;
        for (j = 1; j < pts.length; j++) {
          if (!pts[j - 1] || !pts[j]) { continue; }
          var c = clip(pts[j - 1], pts[j], x0, x1, y0, y1);
          if (!c) { continue; }
          var a = c[0][0].toFixed(1) + "," + c[0][1].toFixed(1), b = c[1][0].toFixed(1) + "," +
              c[1][1].toFixed(1);
          d += (last === a ? "" : "M" + a) + "L" + b;
          last = b;
        }
        if (d) {
          o.push('<path d="' + d + '" fill="none" stroke="' + color + '" stroke-width="' + width + '"' +
                 (dash ? ' stroke-dasharray="' + dash + '"' : "") + (op < 1 ? ' stroke-opacity="' +
                     op + '"' : "") +
                 ' stroke-linejoin="round"/>');
        }
      }
      if (mk) {
        var g = ['<g' + (op < 1 ? ' opacity="' + op + '"' : "") + ">"];
        for (j = 0; j < pts.length; j++) {
          var q = pts[j];
          if (q && q[0] >= x0 - 0.5 && q[0] <= x1 + 0.5 && q[1] >= y0 - 0.5 && q[1] <= y1 + 0.5) {
            g.push(marker(mk, +q[0].toFixed(1), +q[1].toFixed(1), size / 2, color));
          }
        }
        g.push("</g>");
        o.push(g.join(""));
      }
    }
    o.push('<text x="' + ((x0 + x1) / 2) +
        '" y="13" text-anchor="middle" font-size="11" font-weight="600" fill="#222">' +
            esc(panel.title) + "</text>");
    o.push('<text x="' + ((x0 + x1) / 2) + '" y="' + (Hh - 4) +
        '" text-anchor="middle" font-size="11" fill="#222">' + esc(panel.xlabel) + "</text>");
    o.push('<text transform="translate(11,' + ((y0 + y1) / 2) +
        ') rotate(-90)" text-anchor="middle" font-size="11" fill="#222">' + esc(panel.ylabel) + "</text>");
    o.push("</svg>");
    return o.join("");
  }
  function legend(vw) {
    var seen = {}, out = [], pi, i;
    for (pi = 0; pi < vw.p.length; pi++) {
      for (i = 0; i < vw.p[pi].length; i++) {
        var st = data.styles[vw.p[pi][i][1]], label = st[6];
        if (!label || seen[label]) { continue; }
        seen[label] = true;
        var sw = '<svg width="26" height="12" viewBox="0 0 26 12">' +
          (st[1] > 0 ? '<line x1="1" x2="25" y1="6" y2="6" stroke="' + st[0] + '" stroke-width="' +
              Math.max(st[1], 1.2) + '"' +
           (st[2] ? ' stroke-dasharray="' + st[2] + '"' : "") + (st[5] < 1 ? ' stroke-opacity="' +
               st[5] + '"' : "") + "/>" : "") +
          (st[3] ? marker(st[3], 13, 6, Math.min(st[4], 8) / 2, st[0]) : "") + "</svg>";
        out.push("<span>" + sw + esc(label) + "</span>");
      }
    }
    return out.length ? '<div class="nl-legend">' + out.join("") + "</div>" : "";
  }
  function render() {
    var parts = [], setting = [], i;
    for (i = 0; i < inputs.length; i++) {
      var el = inputs[i], c = data.controls[+el.getAttribute("data-control")], k = +el.value;
      parts.push(c.values[k]);
      setting.push(esc(c.label) + " " + esc(c.shown[k]));
      if (el.tagName === "INPUT") {
        var out = root.querySelector("output[for='" + el.id + "']");
        if (out) { out.textContent = c.shown[k]; }
      }
    }
    var index = data.keys[parts.join("|")];
    var html = '<div class="nl-setting">' + setting.join(" \u00b7 ") + "</div>";
    if (index === undefined) {
      view.innerHTML = html + "<p>This setting was not precomputed.</p>";
      return;
    }
    var vw = data.views[index], svgs = [];
    for (i = 0; i < data.panels.length; i++) { svgs.push(panelSvg(vw, i)); }
    view.innerHTML = html + legend(vw) + '<div class="nl-panels">' + svgs.join("") + "</div>" +
                     (data.texts[vw.t] ? '<div class="nl-text">' + data.texts[vw.t] + "</div>" : "");
  }
  root.addEventListener("input", render);
  root.addEventListener("change", render);
  render();
})();
"""
