"""The small problems the Hessian tests share: a BatchNorm network and an independent functional
forward pass for it (the oracle), closed-form quadratics, state snapshots.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DT = torch.float64


def bn_net(seed: int = 0) -> nn.Sequential:
    """Linear(5,12) -> BN -> tanh -> Linear(12,12) -> tanh -> Linear(12,3): 291 parameters."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Linear(5, 12), nn.BatchNorm1d(12), nn.Tanh(), nn.Linear(12, 12), nn.Tanh(),
        nn.Linear(12, 3),
    ).to(DT)
    with torch.no_grad():
        net[1].weight.uniform_(0.5, 1.5)
        net[1].bias.normal_(0.0, 0.3)
        net[1].running_mean.normal_(0.0, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    return net


def plain_net(seed: int = 0) -> nn.Sequential:
    """Linear(5,12) -> tanh -> Linear(12,12) -> tanh -> Linear(12,3): 267 parameters."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(5, 12), nn.Tanh(), nn.Linear(12, 12), nn.Tanh(), nn.Linear(12, 3)
    ).to(DT)


def batch(n: int = 40, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g, dtype=DT) * 1.5 + 0.3
    y = torch.randint(0, 3, (n,), generator=g)
    return x, y


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def oracle_loss_bn(theta, net, x, y, training: bool):
    """The BN network's loss written with explicit formulas (no nn.Module, no F.batch_norm)."""
    sizes = [p.numel() for p in net.parameters()]
    shapes = [p.shape for p in net.parameters()]
    w0, b0, gamma, beta, w3, b3, w5, b5 = [
        c.view(s) for c, s in zip(theta.split(sizes), shapes)
    ]
    h = x @ w0.T + b0
    eps = net[1].eps
    if training:
        mean, var = h.mean(0), ((h - h.mean(0)) ** 2).mean(0)  # biased batch variance
    else:
        mean, var = net[1].running_mean, net[1].running_var
    h = (h - mean) / torch.sqrt(var + eps) * gamma + beta
    h = torch.tanh(torch.tanh(h) @ w3.T + b3)
    logits = h @ w5.T + b5
    return -torch.log_softmax(logits, dim=1)[torch.arange(len(y)), y].mean()


def oracle_loss_plain(theta, net, x, y):
    sizes = [p.numel() for p in net.parameters()]
    shapes = [p.shape for p in net.parameters()]
    w0, b0, w2, b2, w4, b4 = [c.view(s) for c, s in zip(theta.split(sizes), shapes)]
    h = torch.tanh(torch.tanh(x @ w0.T + b0) @ w2.T + b2)
    return F.cross_entropy(h @ w4.T + b4, y)


def exact_bn(net, x, y, training):
    return torch.func.hessian(lambda t: oracle_loss_bn(t, net, x, y, training))(flat(net))


class Quadratic(nn.Module):
    """f(theta) = theta; with loss 0.5 theta^T A theta the Hessian is exactly A."""

    def __init__(self, n: int):
        super().__init__()
        self.theta = nn.Parameter(torch.randn(n, dtype=DT))

    def forward(self, x):
        return self.theta


def quadratic_loss(theta, a):
    return 0.5 * theta @ a @ theta


def spd_matrix(eigenvalues: torch.Tensor, seed: int = 0) -> torch.Tensor:
    n = eigenvalues.numel()
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=DT, generator=torch.Generator().manual_seed(seed)))
    return (q * eigenvalues) @ q.T


def snapshot(model: nn.Module):
    return {
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "buffers": {n: b.clone() for n, b in model.named_buffers()},
        "flags": {n: m.training for n, m in model.named_modules()},
        "grads": {n: (p.grad, None if p.grad is None else p.grad.clone())
                  for n, p in model.named_parameters()},
    }


def assert_unchanged(model: nn.Module, before) -> None:
    for n, p in model.named_parameters():
        assert torch.equal(p, before["params"][n]), n
        ref, value = before["grads"][n]
        assert p.grad is ref, n  # the same object (or None) ...
        if value is not None:
            assert torch.equal(p.grad, value), n  # ... with the same values
    for n, b in model.named_buffers():
        assert torch.equal(b, before["buffers"][n]), n
    assert {n: m.training for n, m in model.named_modules()} == before["flags"]


class Exploding(nn.Module):
    def forward(self, x):
        raise RuntimeError("boom")


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# --------------------------------------------------------------------------------------------
# Data-parallel runs (tests/test_hessian_distributed.py): the functions every rank calls. They
# live here, at module level, so that the spawned processes import them by name.
# --------------------------------------------------------------------------------------------

SHARD_CUTS = (0, 17, 40)  # two ranks with unequal shards of batch(40)


def shard(rank: int, world_size: int, n: int = 40):
    """Rank ``rank``'s part of ``batch(n)``: unequal contiguous pieces at ``SHARD_CUTS``."""
    x, y = batch(n)
    cuts = SHARD_CUTS if world_size == 2 else [round(i * n / world_size) for i in range(world_size + 1)]
    return x[cuts[rank] : cuts[rank + 1]], y[cuts[rank] : cuts[rank + 1]]


def hessian_quantities(op, *, full: bool = True) -> dict:
    """Everything the distributed tests compare, computed by normlib's solvers on ``op``."""
    from normlib.hessian import hessian_matrix, hessian_trace, spectral_density, top_eigenpairs

    v = torch.randn(op.num_params, dtype=DT, generator=torch.Generator().manual_seed(11))
    out = {"loss": op.loss, "gradient": op.gradient(), "hv": op.matvec(v), "n": op.num_samples}
    if full:
        top = top_eigenpairs(op, k=3, tol=1e-10)
        out.update(
            top_values=top.eigenvalues, top_vectors=top.eigenvectors,
            top_values_only=top_eigenpairs(op, k=3, tol=1e-10, eigenvectors=False).eigenvalues,
            power=top_eigenpairs(op, k=1, method="power", tol=1e-6, max_iters=3000).eigenvalues,
            trace=hessian_trace(op, num_probes=10, seed=3).samples,
            trace_pp=hessian_trace(op, num_probes=12, method="hutch++", seed=4).value,
            matrix=hessian_matrix(op),
        )
        density = spectral_density(op, num_iters=20, num_runs=2, seed=5)
        out.update(density_nodes=density.nodes, density_weights=density.weights)
    return out


def distributed_hessian_worker() -> dict:
    """Run on every rank: normlib's Hessian tools over the data-parallel operator."""
    import torch.distributed as dist

    from normlib.hessian import HessianOperator

    torch.set_num_threads(1)
    rank, size = dist.get_rank(), dist.get_world_size()
    group = dist.group.WORLD
    loss = nn.CrossEntropyLoss()
    x, y = shard(rank, size)
    out = {}
    # One batch per rank (the cached-graph path), no batch statistics: exact equality.
    out["plain"] = hessian_quantities(HessianOperator(plain_net(), loss, (x, y), mode="train",
                                                      process_group=group))
    # A DataLoader per rank, batches of 5 (the streamed path).
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=5)
    out["loader"] = hessian_quantities(
        HessianOperator(plain_net(), loss, loader, mode="eval", process_group=group), full=False)
    # BatchNorm: eval mode uses running statistics (exact); train mode normalizes each rank's
    # batch with its own statistics.
    from normlib.hessian import hessian_matrix

    out["bn_eval"] = hessian_matrix(HessianOperator(bn_net(), loss, (x, y), mode="eval",
                                                    process_group=group))
    out["bn_train"] = hessian_matrix(HessianOperator(bn_net(), loss, (x, y), mode="train",
                                                     process_group=group))
    # A rank without data.
    xa, ya = batch(40)
    data = (xa, ya) if rank == 0 else []
    out["empty"] = hessian_quantities(
        HessianOperator(plain_net(), loss, data, mode="eval", process_group=group), full=False)
    # Different parameters on the ranks: refused on every rank.
    try:
        HessianOperator(plain_net(seed=rank), loss, (x, y), mode="eval", process_group=group)
        out["mismatch"] = None
    except ValueError as err:
        out["mismatch"] = str(err)
    # Same parameters, running statistics that differ (BN trained on each rank's shard).
    net = bn_net()
    with torch.no_grad():
        net[1].running_mean.add_(rank)
    try:
        HessianOperator(net, loss, (x, y), mode="eval", process_group=group)
        out["buffer_mismatch"] = None
    except ValueError as err:
        out["buffer_mismatch"] = str(err)
    # Plain arrays: tensors put on a torch.multiprocessing queue travel as shared-memory handles
    # that die with the process that made them.
    return _as_numpy(out)


def _as_numpy(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().numpy()
    if isinstance(obj, dict):
        return {k: _as_numpy(v) for k, v in obj.items()}
    return obj
