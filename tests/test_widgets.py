"""normlib.widgets: the explorer's callbacks, driven without a browser or a kernel."""

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from normlib.widgets import (  # noqa: E402
    PropagationExplorer,
    explorer_config,
    plot_propagation,
    propagation_profiles,
)


@pytest.fixture
def explorer():
    return PropagationExplorer(model="vgg", depth=6, width=8, batch_size=16)


def test_explorer_draws_the_initial_setting(explorer):
    assert explorer.updates == 1
    assert explorer.diagnosis.description.startswith("VGG-6 (width 8), norm=bn")
    # One curve per panel with one point per probed layer.
    assert [len(ax.lines) for ax in explorer.axes] == [1, 1, 1]
    assert len(explorer.axes[0].lines[0].get_xdata()) == 6
    assert explorer.group_size.disabled  # BatchNorm has no groups
    for word in ("stable forward", "informative forward", "stable backward"):
        assert word in explorer.verdicts.value


def test_choosing_a_normalizer_reprobes_and_redraws(explorer):
    before = explorer.axes[1].lines[0].get_ydata().copy()
    explorer.norm.value = "ln"
    assert explorer.updates == 2
    assert explorer.diagnosis.description.startswith("VGG-6 (width 8), norm=ln")
    after = explorer.axes[1].lines[0].get_ydata()
    assert list(before) != list(after)
    assert explorer.axes[0].get_legend().get_texts()[0].get_text() == "ln"


def test_group_size_slider_applies_to_group_norm_only(explorer):
    explorer.norm.value = "gn"
    assert not explorer.group_size.disabled
    explorer.group_size.value = 2
    assert explorer.config().norm_kwargs == {"group_size": 2}
    assert explorer.axes[0].get_legend().get_texts()[0].get_text() == "gn (group size 2)"
    explorer.norm.value = "bn"
    assert explorer.group_size.disabled and explorer.config().norm_kwargs == {}


def test_larger_groups_make_samples_more_similar():
    # Group size 1 is Instance Normalization, 16 (the first stage's width) Layer Normalization in
    # the first stage: the paper's trend, measured 0.60-0.66 vs 0.90-0.94 on seeds 0-2.
    e = PropagationExplorer(model="vgg", norm="gn", norms=["gn"], depth=20, width=16, batch_size=32)
    e.group_size.value = 1
    small = e.diagnosis.metrics["similarity"]
    e.group_size.value = 16
    large = e.diagnosis.metrics["similarity"]
    assert large > small + 0.1, (small, large)


def test_depth_and_batch_size_sliders_change_the_probed_model(explorer):
    explorer.depth.value = 9
    assert len(explorer.diagnosis.layers) == 9
    assert len(explorer.axes[2].lines[0].get_xdata()) == 9
    explorer.batch_size.value = 8
    assert set(explorer.diagnosis.layers["batch_size"]) == {8}
    assert explorer.updates == 3


def test_resnet_explorer_offers_depths_6n_plus_2():
    e = PropagationExplorer(model="resnet", width=4, batch_size=8, skipinit=True)
    assert (e.depth.min, e.depth.step, e.depth.value) == (8, 6, 20)
    e.depth.value = 14
    assert e.config().architecture == "ResNet-14 SkipInit"
    assert len(e.diagnosis.layers) == 1 + 6  # stem and the blocks


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"norm": "wn", "norms": ["bn"]}, "norm"),
        ({"model": "mlp"}, "model"),
        ({"model": "resnet", "depth": 21}, "depth"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_explorer_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        PropagationExplorer(**{"width": 4, **kwargs})


def test_static_plot_has_one_line_per_profile_in_each_panel():
    profiles = propagation_profiles(["bn", "in", "none"], model="vgg", depth=5, width=4,
                                    batch_size=8)
    fig = plot_propagation(profiles)
    assert len(fig.axes) == 3 and all(len(ax.lines) == 3 for ax in fig.axes)
    assert fig.axes[0].get_yscale() == "log" and fig.axes[1].get_yscale() == "linear"
    with pytest.raises(ValueError, match="axes"):
        plot_propagation(profiles, axes=fig.axes[:2])


def test_explorer_config_is_float64_digits_and_drops_group_size_for_ungrouped_norms():
    cfg = explorer_config("in", group_size=4, model="resnet", depth=8)
    assert cfg.dtype == "float64" and cfg.dataset == "digits" and cfg.norm_kwargs == {}


# --------------------------------------------------------------------------------------------
# Static explorers (normlib.explorer and the book's three explorers)
# --------------------------------------------------------------------------------------------

import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
from html import escape  # noqa: E402
from html.parser import HTMLParser  # noqa: E402

import torch  # noqa: E402

from normlib import hessian as H  # noqa: E402
from normlib import linear as L  # noqa: E402
from normlib.data import load_digits, load_wine  # noqa: E402
from normlib.diagnose import diagnose_config  # noqa: E402
from normlib.explorer import Control, Line, Panel, StaticExplorer, compact  # noqa: E402
from normlib.models import VGG  # noqa: E402
from normlib.widgets import (  # noqa: E402
    descent_contours,
    descent_explorer,
    descent_grid,
    propagation_grid,
    spectrum_explorer,
    spectrum_grid,
    static_propagation_explorer,
)

_VOID = {"input", "br", "img", "meta", "link", "hr", "area", "base", "col", "source", "wbr"}


class _Checker(HTMLParser):
    """Balanced tags, the ids, and the text of every <script>."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.ids, self.errors, self.scripts = [], [], [], []
        self._script = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.append(attrs["id"])
        if tag in _VOID:
            return
        self.stack.append(tag)
        if tag == "script":
            self._script = [attrs.get("type", "text/javascript"), attrs.get("class"), ""]

    def handle_startendtag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.append(attrs["id"])

    def handle_endtag(self, tag):
        if tag in _VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()
        if tag == "script":
            self.scripts.append(tuple(self._script))
            self._script = None

    def handle_data(self, data):
        if self._script is not None:
            self._script[2] += data


def _parse(html):
    checker = _Checker()
    checker.feed(html)
    checker.close()
    assert not checker.errors and not checker.stack, (checker.errors, checker.stack)
    return checker


def _payload(html):
    scripts = _parse(html).scripts
    data = [json.loads(text) for kind, cls, text in scripts if kind == "application/json"]
    assert len(data) == 1
    return data[0]


def _toy(title="toy"):
    e = StaticExplorer(title, [Control("a", "a", (1, 2, 3)),
                               Control("f", "function", ("sin", "cos"), kind="select")],
                       [Panel("f(a x)", "x", "y")])
    xs = [i / 10 for i in range(11)]
    for a in (1, 2, 3):
        for f in ("sin", "cos"):
            fn = getattr(math, f)
            e.add_view({"a": a, "f": f}, [[Line(xs, [fn(a * x) for x in xs], label=f)]],
                       text=f"<b>{f}</b> of {a}x </script><script>alert(1)</script>")
    return e


def _no_foreign_urls(html):
    assert not re.search(r"https?://", html), re.findall(r"https?://[^\s\"'<>]*", html)
    assert "src=" not in html  # nothing is loaded, not even from the page's own host


def test_static_explorer_html_is_well_formed_and_self_contained():
    html = _toy().to_html()
    checker = _parse(html)
    _no_foreign_urls(html)
    # The data, the viewer, one range input and one select, the view element.
    kinds = [kind for kind, _, _ in checker.scripts]
    assert kinds == ["application/json", "text/javascript"]
    assert html.count('type="range"') == 1 and html.count("<select") == 1
    assert html.startswith('<div class="nl-explorer" id="nl-explorer-')
    assert html.count('class="nl-explorer-view"') == 1
    # Text that would close the script element is escaped inside the JSON.
    json_text = checker.scripts[0][2]
    assert "</script" not in json_text and "<b>" not in json_text
    data = json.loads(json_text)
    assert data["texts"][data["views"][data["keys"]["2|cos"]]["t"]].startswith("<b>cos</b> of 2x")


def test_static_explorer_embeds_a_view_for_every_combination_and_rounds_the_data():
    e = _toy()
    data = e.data()
    assert sorted(data["keys"]) == sorted(f"{a}|{f}" for a in (1, 2, 3) for f in ("sin", "cos"))
    view = data["views"][data["keys"]["3|sin"]]
    sid, _ = view["p"][0][0]
    xi, yi = data["series"][sid]
    assert data["arrays"][yi] == compact([math.sin(3 * i / 10) for i in range(11)], 3)
    assert data["arrays"][xi] == [i / 10 for i in range(11)]
    # The x coordinates are stored once for the six views, next to the six curves.
    assert len(data["arrays"]) == 1 + 6


def test_static_explorer_refuses_an_incomplete_or_misnamed_view():
    e = StaticExplorer("t", [Control("a", "a", (1, 2))], [Panel("p", "x", "y")])
    e.add_view({"a": 1}, [[Line([0, 1], [0, 1])]])
    with pytest.raises(ValueError, match="no view"):
        e.to_html()
    with pytest.raises(ValueError, match="not a value"):
        e.add_view({"a": 3}, [[Line([0, 1], [0, 1])]])
    with pytest.raises(ValueError, match="missing"):
        e.add_view({}, [[Line([0, 1], [0, 1])]])
    with pytest.raises(ValueError, match="one list per panel"):
        e.add_view({"a": 2}, [])
    with pytest.raises(ValueError, match="at least two"):
        Control("a", "a", (1,))
    with pytest.raises(ValueError, match="marker"):
        Line([0], [0], marker="?")
    assert compact([float("inf"), -0.000123456]) == [None, -0.0001235]


def test_two_explorers_on_one_page_have_unique_ids():
    page = _toy("one").to_html() + _toy("two").to_html() + _toy("one").to_html()
    ids = _parse(page).ids
    # Each explorer: its root, two controls and the slider's printed value.
    assert len(ids) == len(set(ids)) and len(ids) == 3 * 4
    roots = re.findall(r'<div class="nl-explorer" id="([^"]+)"', page)
    assert len(set(roots)) == 3
    # Each viewer looks up its own root.
    for root in roots:
        assert page.count(f'getElementById("{root}")') == 1


# -- the book's explorers: values equal direct normlib calls ----------------------------------

@pytest.fixture(scope="module")
def small_propagation():
    return propagation_grid(["bn", "gn", "none"], depths=(3, 5), group_sizes=(2, 4),
                            batch_sizes=(8, 16), width=4)


def test_propagation_grid_equals_diagnose_config(small_propagation):
    assert len(small_propagation) == 2 * 2 * (1 + 2 + 1)
    for norm, depth, size, batch in [("gn", 5, 2, 16), ("bn", 3, None, 8)]:
        direct = diagnose_config(explorer_config(norm, depth=depth, width=4, group_size=size,
                                                 batch_size=batch))
        got = small_propagation[norm, depth, size, batch]
        pd_cols = ["variance", "cosine_similarity", "weight_grad_norm"]
        assert got.layers[pd_cols].to_numpy().tolist() == direct.layers[pd_cols].to_numpy().tolist()
        assert got.verdicts == direct.verdicts
    with pytest.raises(ValueError, match="divide"):
        propagation_grid(["gn"], group_sizes=(3,), width=4)


def test_static_propagation_explorer_shows_every_setting(small_propagation):
    explorer = static_propagation_explorer(small_propagation)
    html = explorer.to_html()
    _parse(html)
    _no_foreign_urls(html)
    data = _payload(html)
    names = [c["name"] for c in data["controls"]]
    assert names == ["norm", "depth", "group_size", "batch_size"]
    # Every combination, the group size included for the normalizers without groups.
    assert len(data["keys"]) == 3 * 2 * 2 * 2
    assert data["controls"][0]["values"] == ["bn", "gn", "none"]
    for (norm, depth, size, batch), diagnosis in small_propagation.items():
        key = f"{norm}|{depth}|{size if size is not None else 2}|{batch}"
        view = data["views"][data["keys"][key]]
        for panel, column in zip(view["p"], ["variance", "cosine_similarity", "weight_grad_norm"]):
            chosen = panel[-1]  # the chosen normalizer is drawn last, on top
            ys = data["arrays"][data["series"][chosen[0]][1]]
            assert ys == compact(diagnosis.layers[column], 3)
            assert len(panel) == 3  # and the two other normalizers
        text = data["texts"][view["t"]]
        for check in diagnosis.checks:
            assert f"<b>{check.status}</b>: {escape(check.verdict)}" in text
    assert 'selected>GroupNorm' in html  # the grouped normalizer is shown first


def test_descent_grid_equals_gradient_descent_and_contours_are_level_sets():
    wine = load_wine()
    full = torch.cat([wine.x_train.double(), wine.x_test.double()])
    x, y = full[:, [6, 5]], full[:, 11]
    runs = descent_grid(x, y, step_scales=(0.5, 1.0, 2.2), steps=30)
    for kind, scale in [("raw", 0.5), ("zca", 1.0), ("center", 2.2)]:
        problem = L.LeastSquares(L.fit_input_transform(x, kind)(x), y)
        path = L.gradient_descent(problem, scale / problem.lambda_max, 30)
        assert torch.allclose(runs.paths[kind, scale], path, rtol=1e-12, atol=1e-14)
        best = problem.loss(problem.solution)
        gap = (problem.loss(path) - best) / (problem.loss(path[0]) - best)
        # relative gaps are of order 1; once converged they are rounding noise around 0
        assert torch.allclose(runs.gaps[kind, scale], gap, rtol=1e-12, atol=1e-14)
    assert float(runs.gaps["center", 2.2][-1]) > 1e3  # above 2 / lambda_max: diverges
    assert float(runs.gaps["zca", 1.0][1]) < 1e-12  # whitened: one step
    problem = runs.problems["raw"]
    box, contours = descent_contours(runs, "raw")
    assert box[0] < 0 < box[1] and box[2] < 0 < box[3]  # the start w = 0 is in view
    best = problem.loss(problem.solution)
    for level, points in contours:
        w = torch.cat([points.T, problem.solution[2].expand(points.shape[1], 1)], 1)
        assert torch.allclose(problem.loss(w) - best, torch.full_like(w[:, 0], level), rtol=1e-9)
    html = descent_explorer(runs).to_html()
    _no_foreign_urls(html)
    data = _payload(html)
    assert len(data["keys"]) == 4 * 3
    view = data["views"][data["keys"]["zca|1.0"]]
    path_series = view["p"][0][-2]
    assert data["arrays"][data["series"][path_series[0]][0]][:2] == compact(runs.paths["zca", 1.0][:2, 0], 3)
    assert "diverges" in data["texts"][data["views"][data["keys"]["raw|2.2"]]["t"]]


@pytest.fixture(scope="module")
def small_spectrum(one_thread):
    digits = load_digits()
    x, y = digits.x_train[:96], digits.y_train[:96]
    state = torch.get_rng_state()
    grid = spectrum_grid(x, y, norms=(None, "bn"), steps=(0, 3), hessian_batch=32, depth=3,
                         width=2, batch_size=16, k=3, slq_iters=8, tol=1e-6)
    assert torch.equal(state, torch.get_rng_state())  # the caller's random state is left alone
    return x, y, grid


def test_spectrum_grid_equals_direct_hessian_calls(small_spectrum, one_thread):
    x, y, grid = small_spectrum
    assert sorted(grid) == sorted([("none", 0), ("none", 3), ("bn", 0), ("bn", 3)])
    loss_fn = torch.nn.CrossEntropyLoss()
    torch.manual_seed(0)
    net = VGG(in_channels=1, num_classes=10, depth=3, width=2, norm="bn")
    model = H.run_sgd(net, loss_fn, (x, y), lr=0.05, steps=3, batch_size=16, momentum=0.9).model
    op = H.HessianOperator(model, loss_fn, (x[:32], y[:32]), mode="train")
    direct = H.top_eigenpairs(op, k=3, tol=1e-6).eigenvalues
    assert torch.allclose(grid["bn", 3].eigenvalues, direct.cpu(), rtol=1e-6)
    # And against the dense Hessian's spectrum.
    exact = torch.linalg.eigvalsh(H.hessian_matrix(op).double()).flip(0)[:3]
    assert torch.allclose(grid["bn", 3].eigenvalues, exact.cpu(), rtol=1e-4)
    assert abs(grid["bn", 3].loss - float(op.loss)) < 1e-12
    # The SLQ density is a probability measure over the spectrum.
    assert torch.allclose(grid["bn", 3].density.weights.sum(1), torch.ones(1, dtype=torch.float64))
    assert float(grid["bn", 3].density.nodes.max()) <= float(exact[0]) * (1 + 1e-6)


def test_spectrum_explorer_embeds_every_step_and_normalizer(small_spectrum):
    _, _, grid = small_spectrum
    html = spectrum_explorer(grid, lr=0.05).to_html()
    _parse(html)
    _no_foreign_urls(html)
    data = _payload(html)
    assert sorted(data["keys"]) == ["bn|0", "bn|3", "none|0", "none|3"]
    view = data["views"][data["keys"]["none|3"]]
    top = view["p"][0][-1]
    assert data["arrays"][data["series"][top[0]][1]] == compact(grid["none", 3].eigenvalues, 3)
    assert "76" in data["texts"][view["t"]]  # 2 (1 + 0.9) / 0.05


@pytest.mark.skipif(shutil.which("chromium") is None and not __import__("os").path.exists(
    "/usr/bin/chromium"), reason="needs a Chromium binary")
def test_moving_each_control_redraws_the_view_in_a_browser(tmp_path):
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    page_html = ("<!doctype html><html><head><meta charset='utf-8'><title>t</title></head><body>"
                 + _toy("one").to_html() + _toy("two").to_html() + "</body></html>")
    path = tmp_path / "explorers.html"
    path.write_text(page_html)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                                    args=["--headless=new", "--no-sandbox", "--disable-gpu",
                                          "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors, requests = [], []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.goto(path.as_uri())
        roots = page.query_selector_all("div.nl-explorer")
        assert len(roots) == 2
        for root in roots:
            view = root.query_selector(".nl-explorer-view")
            assert view.query_selector("svg") is not None
            for control in root.query_selector_all("input[type=range], select"):
                before = view.inner_html()
                if control.evaluate("e => e.tagName") == "SELECT":
                    control.select_option(index=1)
                else:
                    control.fill("2")
                assert view.inner_html() != before
            # The printed value follows the slider.
            assert root.query_selector("output").inner_text() == "3"
        browser.close()
    assert errors == [] and requests == [path.as_uri()]
