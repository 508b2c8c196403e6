"""torch.compile cleanliness: every registered normalizer traces into one graph.

``torch._dynamo.explain`` traces a training-mode forward of each registered normalizer
(weight normalizers wrap a convolution, as they are used) and counts graph breaks. It only
traces (no code generation), so the whole file takes seconds. A break means a Python-side
read of a tensor value (``.item()``, ``bool(t)``), an untraceable context manager or a
generator that dynamo cannot follow; compiled models then fall back to eager around it.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import normlib
from normlib import registry
from normlib.framework import GROUP, Standardize, normalize

NAMES = normlib.available_norms()


def _module(name: str) -> nn.Module:
    if registry.is_weight_norm(name):
        return registry.weight_transform(name)(nn.Conv2d(8, 8, 3, padding=1))
    return normlib.create_norm(name, 8)


def _explain(fn, *args):
    torch._dynamo.reset()
    try:
        return torch._dynamo.explain(fn)(*args)
    finally:
        torch._dynamo.reset()


def test_every_registered_normalizer_is_covered():
    assert len(NAMES) > 30
    assert any(registry.is_weight_norm(n) for n in NAMES)
    assert {"bn", "iternorm", "zca", "population", "switchable_whitening"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_registered_normalizer_has_no_graph_break_in_training(name):
    torch.manual_seed(0)
    module = _module(name).train()
    x = torch.randn(4, 8, 6, 6, requires_grad=True)
    explanation = _explain(lambda t: module(t).sum(), x)
    reasons = [str(r.reason).splitlines()[0] for r in explanation.break_reasons]
    assert explanation.graph_break_count == 0, reasons
    assert explanation.graph_count == 1


def test_explain_detects_a_graph_break():
    # The check above can fail: an explicit break in the middle of a function is counted.
    def broken(t):
        t = t * 2
        torch._dynamo.graph_break()
        return t + 1

    assert _explain(broken, torch.randn(3)).graph_break_count == 1


def test_compiled_framework_path_equals_eager_values_and_gradients():
    torch.manual_seed(0)
    x = torch.randn(4, 8, 5, 5, dtype=torch.float64)
    weight = torch.randn(8, dtype=torch.float64, requires_grad=True)

    def f(t, w):
        from normlib.framework import Affine
        return normalize(t, GROUP(4), Standardize(1e-5), Affine(w, None))

    x_eager = x.clone().requires_grad_()
    x_comp = x.clone().requires_grad_()
    grad = torch.randn_like(x)
    torch._dynamo.reset()
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    y_eager, y_comp = f(x_eager, weight), compiled(x_comp, weight)
    torch.testing.assert_close(y_comp, y_eager)
    g_eager = torch.autograd.grad(y_eager, (x_eager, weight), grad)
    g_comp = torch.autograd.grad(y_comp, (x_comp, weight), grad)
    torch._dynamo.reset()
    for a, b in zip(g_comp, g_eager):
        torch.testing.assert_close(a, b)
