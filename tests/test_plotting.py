"""normlib.plotting: one color and one marker per normalizer, readable column-width figures."""

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from normlib.plotting import (  # noqa: E402
    COLUMN_WIDTH,
    NORM_COLORS,
    NORM_MARKERS,
    figure,
    norm_label,
    norm_style,
)
from normlib.registry import available_norms  # noqa: E402


def test_every_registered_normalizer_has_its_own_style_and_label():
    names = [n for n in available_norms()]
    styles = {n: (norm_style(n)["color"].lower(), norm_style(n)["marker"]) for n in names}
    assert len(set(styles.values())) == len(names)  # no two share color and marker
    assert all(n in NORM_COLORS and n in NORM_MARKERS for n in names)
    assert all(norm_label(n) != n or n in ("divisive", "attentive") for n in names if n != "none")


def test_colors_are_distinct_across_all_registered_normalizers():
    names = available_norms()
    colors = [NORM_COLORS[n].lower() for n in names]
    assert len(set(colors)) == len(colors), sorted(colors)


def test_figures_fit_the_column_and_refuse_more_than_three_panels_a_row():
    fig, axes = figure(2, 3)
    assert axes.shape == (2, 3) and fig.get_size_inches()[0] == pytest.approx(COLUMN_WIDTH)
    with pytest.raises(ValueError, match="at most 3 panels"):
        figure(1, 4)
