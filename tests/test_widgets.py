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
