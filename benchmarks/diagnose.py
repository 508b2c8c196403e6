"""normlib.diagnose against one forward and backward pass of the same model (issue 18's goal).

    .venv/bin/python benchmarks/diagnose.py [--quick] [--rounds 5] [--threads 1] [--clock cpu]

The goal: diagnosing a ResNet-18-size model on a batch of 32 x 3 x 224 x 224 costs at most
three forward+backward passes of the model. The model is torchvision's ``resnet18()`` where
torchvision imports (through ``tests/peers.py`` when it is there), else a ResNet-18 built here
with torchvision's layout and initialization (the same modules, 11.7 M parameters); the output
says which. Inputs are Gaussian, the model is in training mode (batch statistics) for both.

- forward+backward: ``loss = 0.5 * |f(x)|^2 / N`` (the loss ``diagnose`` uses without
  targets), ``loss.backward()``, gradients cleared before each round;
- diagnose: ``normlib.diagnose.diagnose(model, x)`` with default arguments (probes on the 8
  residual blocks, counters on the 21 weight layers, one forward and one backward pass,
  statistics in the hooks, the model's state saved and restored).

Rounds alternate the two (A, B, A, B, ...) after one warm-up of each, so that other users'
load on a shared machine disturbs both alike; the table shows medians and their ratio. The
clock is the process's CPU time with one torch thread by default: on a shared machine it is
what other users' load disturbs least (``--clock wall`` for wall-clock time, the right clock
with several threads or on a GPU, where the script synchronizes before reading it).
``--quick`` uses 8 x 3 x 64 x 64 inputs and 3 rounds (a smoke run, not the goal's size).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from normlib.diagnose import diagnose

GOAL = 3.0  # forward+backward passes


class _Block(nn.Module):
    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNet18(nn.Module):
    """torchvision's ``resnet18()`` layout and initialization, for machines without torchvision."""

    def __init__(self, num_classes=1000):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1, self.layer2 = self._stage(64, 1), self._stage(128, 2)
        self.layer3, self.layer4 = self._stage(256, 2), self._stage(512, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _stage(self, planes, stride):
        down = None
        if stride != 1 or self.inplanes != planes:
            down = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False),
                                 nn.BatchNorm2d(planes))
        first = _Block(self.inplanes, planes, stride, down)
        self.inplanes = planes
        return nn.Sequential(first, _Block(planes, planes))

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18() -> tuple[nn.Module, str]:
    """(model, which one it is)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    try:
        try:
            from peers import torchvision  # defines what torchvision's CPU import needs
        except ModuleNotFoundError as err:
            if err.name != "peers":
                raise
            import torchvision
        return torchvision.models.resnet18(), f"torchvision {torchvision.__version__} resnet18()"
    except Exception as err:  # any failure to import it: the stand-in, and say why
        reason = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}"
        return ResNet18(), f"normlib's stand-in with torchvision's resnet18 layout ({reason})"


def forward_backward(model: nn.Module, x: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    out = model(x)
    (0.5 * out.pow(2).sum() / x.shape[0]).backward()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 x 3 x 64 x 64 inputs, 3 rounds")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 5; quick 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                        help="process CPU time (default) or wall-clock time")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    shape = (8, 3, 64, 64) if args.quick else (32, 3, 224, 224)
    rounds = args.rounds or (3 if args.quick else 5)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    clock = time.process_time if args.clock == "cpu" and device.type == "cpu" else time.perf_counter

    def now() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        return clock()

    torch.manual_seed(0)
    model, which = resnet18()
    model.train().to(device)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0)).to(device)
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {which}, {params / 1e6:.1f} M parameters")
    clock_name = "process CPU time" if clock is time.process_time else "wall-clock time"
    print(f"input: {' x '.join(map(str, shape))}, train mode, {device}, {args.threads} thread(s), "
          f"{clock_name}, {rounds} interleaved rounds after one warm-up each")

    result = diagnose(model, x)  # warm-up of both, and the diagnosis shown below
    forward_backward(model, x)
    times = {"forward+backward": [], "diagnose": []}
    for _ in range(rounds):
        start = now()
        forward_backward(model, x)
        times["forward+backward"].append(now() - start)
        start = now()
        diagnose(model, x)
        times["diagnose"].append(now() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["diagnose"] / med["forward+backward"]
    print()
    print(f"{'measurement':<20}{'median s':>10}{'min s':>10}{'max s':>10}")
    for k, v in times.items():
        print(f"{k:<20}{med[k]:>10.3f}{min(v):>10.3f}{max(v):>10.3f}")
    met = "MET" if ratio <= GOAL else "NOT MET"
    size = "" if not args.quick else " (quick run: not the goal's input size)"
    print(f"\ndiagnose / forward+backward: {ratio:.2f} passes; goal <= {GOAL:g} passes: {met}{size}")
    print(f"\n{result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
