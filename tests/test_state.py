"""normlib._state: the model is left as found, and only what changed is written back."""

import pytest
import torch
from torch import nn

from normlib._state import check_materialized, preserved_state
from normlib.models import MLP


def _model():
    torch.manual_seed(0)
    return MLP(4, 3, width=8, depth=2, norm="bn")


def test_pending_backward_survives_a_preserved_forward_pass_in_train_mode():
    model = _model().train()
    x = torch.randn(16, 4)
    loss = model(x).square().mean()
    with preserved_state(model):
        model.eval()
        model.train()(torch.randn(16, 4) * 3)  # updates running statistics in place
        for p in model.parameters():
            p.grad = torch.ones_like(p)
    loss.backward()  # would raise "modified by an inplace operation" if parameters were rewritten
    assert all(p.grad is not None for p in model.parameters())


def test_values_flags_grads_and_slots_are_restored():
    model = _model().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    p0 = next(model.parameters())
    g0 = torch.zeros_like(p0)
    p0.grad = g0
    bn = model.layers[0][1]
    with pytest.raises(RuntimeError, match="boom"), preserved_state(model):
        model.train()(torch.randn(8, 4) + 3)
        with torch.no_grad():
            p0.mul_(2.0)
        g0.add_(1.0)
        bn.running_var = torch.full_like(bn.running_var, 7.0)  # a new object in the slot
        bn.register_buffer("extra", torch.ones(1))  # added during the forward
        raise RuntimeError("boom")
    assert not model.training and not bn.training
    assert next(model.parameters()).grad is g0 and float(g0.abs().max()) == 0.0
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert "extra" not in bn._buffers


def test_untouched_tensors_keep_their_version_counter():
    model = _model().eval()
    versions = {n: t._version for n, t in list(model.named_parameters()) + list(model.named_buffers())}
    with preserved_state(model), torch.no_grad():
        model(torch.randn(5, 4))  # eval mode: nothing changes
    after = {n: t._version for n, t in list(model.named_parameters()) + list(model.named_buffers())}
    assert after == versions


def test_inference_tensors_are_restored():
    with torch.inference_mode():
        bn = nn.BatchNorm1d(3)
    with preserved_state(bn), torch.inference_mode():
        bn.train()(torch.randn(8, 3) + 4)
    assert float(bn.running_mean.abs().max()) == 0.0


def test_lazy_model_is_refused_until_materialized():
    model = nn.Sequential(nn.LazyLinear(3), nn.ReLU())
    with pytest.raises(ValueError, match="'0.weight' is an uninitialized lazy tensor.*forward pass"):
        check_materialized(model, what="probe")
    model(torch.randn(2, 5))
    check_materialized(model)


def test_non_module_is_a_type_error():
    with pytest.raises(TypeError, match="torch.nn.Module"), preserved_state(object()):
        pass
