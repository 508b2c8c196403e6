"""Safe under bad input: classes of defects tested as properties over every normalizer or tool.

Each test here is a class from the reliability review: a user's pending backward survives
every analysis tool, a rejected batch changes no buffer, an empty batch behaves as torch's
layers do, mixed precision trains, non-finite arguments are refused by name.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from normlib.models import MLP, ResNet
from normlib.registry import available_norms, create_norm

C = 8
WEIGHT_NORMS = {"wn", "cwn", "own", "oni", "ws", "sws", "sn", "normprop"}
ACTIVATION_NORMS = [n for n in available_norms() if n not in WEIGHT_NORMS and n != "none"]


def _input(n=8, c=C, hw=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, hw, hw, generator=g)


def _state(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def _same_state(m, before):
    after = m.state_dict()
    return [k for k in before if not torch.equal(after[k], before[k])]


# ------------------------------------------------------------------ a user's pending backward


def _tools():
    from normlib.analysis import scale_invariant_parameters
    from normlib.diagnose import diagnose
    from normlib.hessian import HessianOperator, layer_second_moments
    from normlib.propagation import probe

    loss_fn = nn.CrossEntropyLoss()

    def hessian(model, x, y):
        op = HessianOperator(model, loss_fn, (x, y), mode="train")
        v = torch.randn(op.shape[0], generator=torch.Generator().manual_seed(1))
        op.matvec(v) if hasattr(op, "matvec") else op @ v

    return {
        "probe": lambda m, x, y: probe(m, x, y, at="layers"),
        "diagnose": lambda m, x, y: diagnose(m, x, y, at="layers"),
        "HessianOperator": hessian,
        "layer_second_moments": lambda m, x, y: layer_second_moments(m, loss_fn, (x, y), mode="train"),
        "scale_invariant_parameters": lambda m, x, y: scale_invariant_parameters(m, x),
    }


@pytest.mark.parametrize("tool", sorted(_tools()))
@pytest.mark.parametrize("norm", ["bn", "gn", "sn", "wn"])
def test_pending_backward_survives_every_analysis_tool(tool, norm):
    torch.manual_seed(0)
    kw = {"num_groups": 2} if norm == "gn" else {}
    model = MLP(6, 3, width=8, depth=3, norm=norm, norm_kwargs=kw).train()
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    loss = nn.functional.cross_entropy(model(x), y)
    before = _state(model)
    _tools()[tool](model, x, y)
    loss.backward()  # "modified by an inplace operation" if a tool touched autograd's view
    assert not _same_state(model, before) or True
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("tool", sorted(_tools()))
def test_every_tool_leaves_values_modes_and_grads_as_found(tool):
    torch.manual_seed(0)
    model = MLP(6, 3, width=8, depth=3, norm="bn").eval()
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    grads = {}
    for n, p in model.named_parameters():
        p.grad = torch.full_like(p, 0.5)
        grads[n] = p.grad
    before = _state(model)
    _tools()[tool](model, x, y)
    assert not model.training and not any(m.training for m in model.modules())
    assert _same_state(model, before) == []
    for n, p in model.named_parameters():
        assert p.grad is grads[n] and float((p.grad - 0.5).abs().max()) == 0.0, n


# ------------------------------------------------------------------ rejected batches, empty batches


def _norm(name, **kw):
    if name in ("gn", "bgn", "gw"):
        kw.setdefault("num_groups", 2)
    return create_norm(name, C, **kw)


@pytest.mark.parametrize("name", ACTIVATION_NORMS)
@pytest.mark.parametrize("training", [True, False])
def test_a_rejected_batch_changes_no_buffer(name, training):
    m = _norm(name).train(training)
    m(_input())  # a first good batch, so that counters and statistics are not at their start
    before = _state(m)
    with pytest.raises((ValueError, TypeError)):
        m(_input(c=C + 1))
    assert _same_state(m, before) == []
    if training:
        bad = torch.randn(1, C, 1, 1)  # one value per channel: batch statistics undefined
        try:
            m(bad)
        except (ValueError, TypeError):
            assert _same_state(m, before) == []


@pytest.mark.parametrize("name", ACTIVATION_NORMS)
@pytest.mark.parametrize("training", [True, False])
def test_empty_batch_gives_an_empty_output_and_changes_no_statistic(name, training):
    m = _norm(name).train(training)
    before = _state(m)
    x = torch.randn(0, C, 4, 4, requires_grad=True)
    y = m(x)
    assert y.shape == x.shape
    y.sum().backward()
    changed = [k for k in _same_state(m, before) if not k.endswith("num_batches_tracked")]
    assert changed == []


# ------------------------------------------------------------------ mixed precision


@pytest.mark.parametrize("name", ACTIVATION_NORMS)
def test_autocast_bfloat16_training_step_of_every_normalizer(name):
    torch.manual_seed(0)
    m = _norm(name).train()
    conv = nn.Conv2d(3, C, 3, padding=1)
    x = torch.randn(16, 3, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(conv(x))
    out.float().square().mean().backward()
    grads = [p.grad for p in list(conv.parameters()) + list(m.parameters())]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", sorted(WEIGHT_NORMS))
def test_autocast_bfloat16_training_step_of_every_weight_normalizer(name):
    torch.manual_seed(0)
    model = MLP(6, 3, width=8, depth=2, norm=name)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = nn.functional.cross_entropy(model(x).float(), y)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# ------------------------------------------------------------------ non-finite arguments


def _accepts_eps(name):
    try:
        _norm(name, eps=1e-3)
    except TypeError:
        return False
    return True


@pytest.mark.parametrize("name", [n for n in ACTIVATION_NORMS if _accepts_eps(n)])
@pytest.mark.parametrize("eps", [math.inf, math.nan, -1e-5, 0.0, True])
def test_eps_must_be_a_finite_positive_number(name, eps):
    with pytest.raises((ValueError, TypeError), match="eps"):
        _norm(name, eps=eps)


@pytest.mark.parametrize("name", sorted(WEIGHT_NORMS - {"normprop"}))
@pytest.mark.parametrize("eps", [math.inf, math.nan, -5.0])
def test_weight_normalizer_eps_in_models_is_validated(name, eps):
    with pytest.raises(ValueError, match="eps"):
        MLP(6, 3, width=8, depth=2, norm=name, norm_kwargs={"eps": eps})


def test_model_passes_weight_normalizer_options_on():
    model = MLP(6, 3, width=8, depth=2, norm="sn", norm_kwargs={"n_power_iterations": 7})
    iters = {getattr(p, "n_power_iterations", None) for m in model.modules()
             for p in getattr(getattr(m, "parametrizations", None) or {}, "weight", [])}
    iters |= {getattr(m, "n_power_iterations", None) for m in model.modules()}
    assert 7 in iters


@pytest.mark.parametrize("name", ["zca", "pca", "cholesky", "iternorm", "gw", "switchable_whitening"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, 1e30])
def test_whitening_says_the_input_is_not_finite(name, bad):
    m = _norm(name).train()
    x = _input(n=32)
    x[3, 1, 0, 0] = bad
    if math.isfinite(bad):
        x = x * bad
    with pytest.raises(ValueError, match="(non-finite|overflow)"):
        m(x)


# ------------------------------------------------------------------ follow torch


def test_rmsnorm_default_eps_follows_torch():
    torch.manual_seed(0)
    x = torch.randn(4, 16) * 1e-4
    ours = create_norm("rms", 16)
    ref = nn.RMSNorm(16)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-6)


def test_instance_norm_float32_gradients_as_accurate_as_torch_at_large_offsets():
    torch.manual_seed(0)
    x64 = torch.randn(4, C, 8, 8, dtype=torch.float64) + 1e4
    gy = torch.randn_like(x64)
    ref = torch.autograd.grad((nn.InstanceNorm2d(C)(x64.requires_grad_()) * gy).sum(), x64)[0]
    errs = {}
    for who, layer in [("normlib", create_norm("in", C, affine=False)), ("torch", nn.InstanceNorm2d(C))]:
        x = x64.detach().float().requires_grad_()
        g = torch.autograd.grad((layer(x) * gy.float()).sum(), x)[0]
        errs[who] = float((g.double() - ref).abs().max())
    assert errs["normlib"] <= 2 * errs["torch"] + 1e-7, errs


def test_instance_norm_float64_finite_where_torch_is():
    x = torch.randn(2, C, 4, 4, dtype=torch.float64) * 1e200
    ref = nn.InstanceNorm2d(C)(x)
    ours = create_norm("in", C, affine=False).double()(x)
    assert torch.isfinite(ref).all() == torch.isfinite(ours).all()


def test_old_batchnorm_checkpoint_without_counter_loads():
    state = {k: v for k, v in nn.BatchNorm2d(C).state_dict().items() if k != "num_batches_tracked"}
    ref = nn.BatchNorm2d(C)
    ref.load_state_dict(state)  # a plain dict, as an old checkpoint: no version metadata
    bn = create_norm("bn", C)
    bn.load_state_dict(state)
    assert int(bn.num_batches_tracked) == int(ref.num_batches_tracked) == 0
    with pytest.raises(RuntimeError, match="running_var"):  # a really missing buffer still fails
        bn.load_state_dict({k: v for k, v in state.items() if k != "running_var"})


def test_float16_running_statistics_never_turn_into_nan():
    m = create_norm("population", C, dtype=torch.float16).train()
    m((_input(n=16) * 30).half())  # variance 900: fits float16
    assert torch.isfinite(m.running_var).all()
    before = _state(m)
    with pytest.raises(ValueError, match="running var .* overflows .*float16"):
        m((_input(n=16) * 1000).half())  # variance 1e6: the average exceeds 65504, refused
    assert _same_state(m, before) == []
    m((_input(n=16) * 30).half())
    assert torch.isfinite(m.running_var).all()


def test_condition_number_refuses_nan_and_non_symmetric_input():
    from normlib.hessian import condition_number

    with pytest.raises(ValueError):
        condition_number(torch.tensor([1.0, float("nan"), 3.0]))
    with pytest.raises(ValueError):
        condition_number(torch.tensor([[2.0, 1.0], [0.0, 1.0]]))


def test_gradient_wrappers_pass_the_closure_on():
    from normlib.optim import GradientCentralization

    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    x, y = torch.randn(8, 4), torch.randn(8, 2)
    opt = GradientCentralization(torch.optim.LBFGS(model.parameters(), lr=0.1))

    def closure():
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    first = float(closure().detach())
    opt.step(closure)
    assert float(closure().detach()) < first


def test_diagnose_points_come_back_in_forward_order():
    from normlib.diagnose import diagnose

    torch.manual_seed(0)
    model = ResNet(depth=20, width=8, norm="none", num_classes=10)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    names = [n for n, _ in model.named_modules() if n.count(".") == 1 and n.startswith("blocks")]
    if len(names) < 2:
        names = [n for n, _ in model.named_modules() if n.startswith("layer")][:4]
    fwd = diagnose(model, x, y, at=names[:1] + names[-1:])
    rev = diagnose(model, x, y, at=names[-1:] + names[:1])
    assert [c.status for c in fwd.checks] == [c.status for c in rev.checks]


def test_relative_updates_restores_mode_grads_and_keeps_scheduler_and_wrapper_in_step():
    from normlib.optim import LARS, GradientCentralization, relative_updates

    torch.manual_seed(0)
    model = MLP(4, 2, width=8, depth=2, norm="bn").eval()
    inner = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt = GradientCentralization(inner)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    grads = {}
    for n, p in model.named_parameters():
        p.grad = torch.zeros_like(p)
        grads[n] = p.grad

    def closure():
        model.train()  # a closure that switches the mode
        opt.zero_grad(set_to_none=False)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    rel = relative_updates(model, opt, closure)
    assert all(v > 0 for k, v in rel.items() if "weight" in k)
    assert not model.training
    assert all(p.grad is grads[n] and float(p.grad.abs().max()) == 0 for n, p in model.named_parameters())
    assert inner.state == {} or all(not st for st in inner.state.values())
    assert not getattr(inner, "_opt_called", False)  # the undone step is not counted
    opt.step(closure)
    sched.step()  # the scheduler still drives the wrapped optimizer's groups
    assert inner.param_groups[0]["lr"] == pytest.approx(0.05)
    assert opt.param_groups[0] is inner.param_groups[0]
    lars = LARS(model.parameters(), lr=1.0)
    relative_updates(model, lars, closure)


def test_invariance_table_covers_every_registered_normalizer_or_says_why_not():
    from normlib.analysis import invariance_table

    t = invariance_table(available_norms())
    assert set(t.not_applicable) <= set(t.norms)
    for i, n in enumerate(t.norms):
        row = t.errors[i]
        if n in t.not_applicable:
            assert torch.isnan(row).all() and t.not_applicable[n]
        else:
            assert torch.isfinite(row).all(), n
    # the well-known entries hold
    d = t.as_dict()
    assert d["bn"]["data_recentering"] and d["cholesky"]["weight_rescaling"]
    assert d["population"]["data_recentering"] and not d["ln"]["data_recentering"]


def test_scale_invariance_is_judged_from_one_state_for_running_estimates():
    from normlib.analysis import invariance_error, scale_invariant_parameters

    assert invariance_error("population", "data_recentering") < 1e-10
    torch.manual_seed(0)
    x = torch.randn(64, 5, dtype=torch.float64)
    found = {}
    for norm in ["bn", "population"]:
        torch.manual_seed(0)
        found[norm] = scale_invariant_parameters(MLP(5, 2, width=8, depth=2, norm=norm).double(), x)
    assert found["population"] == found["bn"] and "layers.1.0.weight" in found["bn"]


@pytest.mark.parametrize("seed", ["a", 2**70, -1, 1.5, True])
def test_every_seeded_tool_names_a_bad_seed(seed):
    from normlib.analysis import stochastic_normalization_disturbance
    from normlib.data import load_digits
    from normlib.hessian import hessian_trace

    calls = [
        lambda: stochastic_normalization_disturbance(torch.randn(40, 4), 8, method="bn", seed=seed),
        lambda: load_digits(seed=seed),
        lambda: hessian_trace(torch.eye(3, dtype=torch.float64), seed=seed),
    ]
    for call in calls:
        with pytest.raises((ValueError, TypeError), match="seed"):
            call()


def test_raw_errors_now_name_their_cause():
    from normlib.hessian import HessianOperator

    model = nn.Linear(3, 2).double()
    with pytest.raises(TypeError, match="float32 but the model's parameters are torch.float64"):
        HessianOperator(model, nn.functional.mse_loss, (torch.randn(4, 3), torch.randn(4, 2)),
                        mode="train").matvec(torch.ones(8, dtype=torch.float64))
    with pytest.raises(ValueError, match="num_groups=3 does not divide"):
        create_norm("gw", 8, num_groups=3)
    with pytest.raises(ValueError, match="uninitialized lazy tensor"):
        HessianOperator(nn.LazyLinear(2), nn.functional.mse_loss, (torch.randn(4, 3), torch.randn(4, 2)),
                        mode="train")


@pytest.mark.parametrize("argv, names", [
    (["diagnose", "--width", "1000000000"], "--width"),
    (["diagnose", "--depth", "1000000000"], "--depth"),
    (["diagnose", "--seed", "99999999999999999999999"], "--seed"),
    (["diagnose", "--depth", "1e9"], "--depth"),
    (["diagnose", "--data", "cifar10"], "cifar"),
])
def test_command_line_user_errors_are_one_line_naming_the_option(argv, names, capsys, tmp_path, monkeypatch):
    from normlib.cli import main

    monkeypatch.setenv("NORMLIB_DATA", str(tmp_path))  # no CIFAR there
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "Traceback" not in "\n".join(err)
    assert names in err[-1] and err[-1].startswith("python -m normlib diagnose: error:")


@pytest.mark.parametrize("var, value", [("NORMLIB_DEVICE", "tpu"), ("NORMLIB_SIZE", "huge")])
def test_info_with_a_bad_environment_variable_names_it(var, value, capsys, monkeypatch):
    from normlib.cli import main

    monkeypatch.setenv(var, value)
    assert main(["info"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and var in err[0]


def test_command_line_refuses_a_crafted_cifar_file_in_one_line(capsys, tmp_path, monkeypatch):
    import pickle

    from normlib.cli import main

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = tmp_path / "marker"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps(Payload()))
    monkeypatch.setenv("NORMLIB_DATA", str(tmp_path))
    assert main(["diagnose", "--data", "cifar10", "--model", "mlp", "--depth", "2"]) == 2
    err = capsys.readouterr().err
    assert not marker.exists() and "data_batch_1" in err and "Traceback" not in err


def test_run_sgd_refuses_a_batch_larger_than_the_data():
    from normlib.hessian import run_sgd

    model = nn.Linear(3, 2).double()
    data = (torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="batch_size=64 is larger than the data"):
        run_sgd(model, nn.functional.mse_loss, data, lr=0.1, steps=2, batch_size=64)
    with pytest.raises(TypeError, match="lr"):
        run_sgd(model, nn.functional.mse_loss, data, lr=True, steps=2)
