"""The command line on a user's model: ``python -m normlib diagnose --model package.module:factory``.

A factory in a temporary module stands for a user's package: the command prints the table or
JSON, exits 0, 1 when a verdict fails (so it can gate CI) and 2 with one line on a user's
mistake. In a base install (``pip install normlib``, no ``[data]`` extra) it must run: it never
imports scikit-learn or any other extra unless a dataset is asked for.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from normlib.cli import main

ROOT = Path(__file__).resolve().parents[1]
PROG = "python -m normlib diagnose"
# The packages of the optional extras (data, book): a base install has none of them.
EXTRAS = ("sklearn", "mnist1d", "matplotlib", "scipy", "sympy", "ipywidgets", "jupyter_book")

FACTORIES = '''\
"""Models as a user's package would define them, for the command-line tests."""

import torch
from torch import nn


def _plain(gain: float, depth: int = 8) -> nn.Sequential:
    layers = []
    for i in range(depth):
        conv = nn.Conv2d(3 if i == 0 else 8, 8, 3, padding=1, bias=False)
        nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
        conv.weight.data.mul_(gain)
        layers.append(nn.Sequential(conv, nn.ReLU()))
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


def healthy() -> nn.Module:
    blocks = [nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
              for _ in range(4)]
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), *blocks, nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 10))


def exploding() -> nn.Module:
    return _plain(2.0)


def fading() -> nn.Module:
    return _plain(0.5)


def not_a_model():
    return {"weights": torch.zeros(3)}


def broken():
    raise RuntimeError("the checkpoint is missing\\nsecond line")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = healthy()

    def forward(self, x):
        return self.body(x)
'''


@pytest.fixture(scope="module")
def factories(tmp_path_factory):
    folder = tmp_path_factory.mktemp("user_package")
    (folder / "cli_factories.py").write_text(FACTORIES)
    return folder


def _run(args, folder, *python_options):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), str(ROOT)])}
    return subprocess.run([sys.executable, *python_options, "-m", "normlib", "diagnose", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _imported(importtime_stderr: str) -> set[str]:
    """Top-level packages in the ``-X importtime`` report."""
    names = set()
    for line in importtime_stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def test_a_users_factory_prints_the_table_exits_0_and_imports_no_extra(factories):
    out = _run(["--model", "cli_factories:healthy", "--input-shape", "3,16,16", "--batch-size", "8",
                "--layers"], factories, "-X", "importtime")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("cli_factories:healthy (Sequential, 2,682 parameters), "
                                 "8 Gaussian inputs of shape 3x16x16, seed 0")
    for words in ("stable forward", "informative forward", "stable backward", "compared from 1 to 4"):
        assert words in out.stdout
    assert out.stdout.count("ok:") == 3 and "weight_grad_norm" in out.stdout
    imported = _imported(out.stderr)
    assert {"torch", "normlib", "pandas"} <= imported  # the report is read right
    assert not imported & set(EXTRAS), imported & set(EXTRAS)


def test_a_failing_verdict_exits_1_and_the_json_says_why(factories):
    out = _run(["--model", "cli_factories:exploding", "--input-shape", "3,16,16",
                "--batch-size", "8", "--json"], factories)
    assert out.returncode == 1, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert report["exit_status"] == 1 and report["failed"] and not report["ok"]
    forward = report["checks"][0]
    assert (forward["property"], forward["status"]) == ("stable forward", "failure")
    assert report["metrics"]["variance_rate"] > report["thresholds"]["explosion_rate"]
    assert [row["name"] for row in report["layers"]] == [str(i) for i in range(8)]
    assert report["description"].startswith("cli_factories:exploding (Sequential")


def test_normlibs_own_model_runs_where_the_extras_cannot_be_imported(monkeypatch, capsys):
    # A base install, in this process: importing any extra (or a module of it that another
    # test imported already) raises ImportError.
    for name in {*EXTRAS, *(m for m in sys.modules if m.split(".")[0] in EXTRAS)}:
        monkeypatch.setitem(sys.modules, name, None)
    status, out, err = _main(["--depth", "8", "--width", "4", "--batch-size", "8"], capsys)
    assert status == (1 if "failure:" in out else 0), err
    assert "ResNet-8 (width 4), norm=bn, 8 Gaussian inputs of shape 3x32x32" in out
    # Asking for the digits is asking for scikit-learn: an error that says how to install it
    # (the command line prints its first line, exit status 2).
    from normlib.data import load_digits

    with pytest.raises(ImportError, match=r"needs sklearn.*pip install 'normlib\[data\]'"):
        load_digits()


def test_the_base_dependencies_hold_no_extra():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = {dep.split(">")[0].split("=")[0].split("<")[0].strip().lower()
            for dep in project["dependencies"]}
    assert base == {"torch", "numpy", "tqdm", "pandas"}
    assert "scikit-learn" not in base and any(d.startswith("scikit-learn")
                                              for d in project["optional-dependencies"]["data"])


@pytest.fixture
def user_package(factories, monkeypatch):
    monkeypatch.syspath_prepend(str(factories))
    return factories


def _main(args, capsys):
    status = main(["diagnose", *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.parametrize("args, message", [
    (["--model", "cli_factories:healthy"], "needs --input-shape"),
    (["--model", "no_such_package.models:net", "--input-shape", "3,8,8"],
     "cannot import module 'no_such_package.models'"),
    (["--model", "cli_factories:missing", "--input-shape", "3,8,8"], "has no attribute 'missing'"),
    (["--model", "cli_factories:not_a_model", "--input-shape", "3,8,8"],
     "returned a dict, not a torch.nn.Module"),
    (["--model", "cli_factories:broken", "--input-shape", "3,8,8"],
     "calling it raised RuntimeError: the checkpoint is missing"),
    (["--model", "cli_factories:healthy", "--input-shape", "3,8,8", "--norm", "gn", "--depth", "8"],
     "--depth, --norm build normlib's own models"),
    (["--model", "cli_factories:healthy", "--input-shape", "3,8,8", "--data", "digits"], "--data"),
    (["--model", "cli_factories:healthy", "--input-shape", "5,8,8"],
     "forward or backward pass on a batch of shape (32, 5, 8, 8) failed"),
])
def test_a_users_mistake_is_one_line_and_exit_status_2(user_package, capsys, args, message):
    status, out, err = _main(args, capsys)
    assert status == 2 and out == ""
    assert err.startswith(f"{PROG}: error:") and len(err.strip().splitlines()) == 1, err
    assert message in err


def test_a_class_is_a_factory_too(user_package, capsys):
    status, out, _ = _main(["--model", "cli_factories:Net", "--input-shape", "3,8,8",
                            "--batch-size", "4"], capsys)
    assert status == 0 and "cli_factories:Net (Net, 2,682 parameters)" in out
    assert "compared from body.1 to body.4" in out


def test_fail_on_chooses_which_verdicts_fail_the_command(user_package, capsys):
    fading = ["--model", "cli_factories:fading", "--input-shape", "3,16,16", "--batch-size", "8"]
    status, out, _ = _main(fading, capsys)
    assert "warning: variance vanishes" in out and "failure:" not in out and status == 0
    status, _, err = _main([*fading, "--fail-on", "warning"], capsys)
    assert status == 1 and "a verdict is a warning" in err
    exploding = ["--model", "cli_factories:exploding", "--input-shape", "3,16,16", "--batch-size", "8"]
    assert _main([*exploding, "--fail-on", "never"], capsys)[0] == 0
    assert _main(exploding, capsys)[0] == 1


def test_at_names_the_probed_points_on_the_command_line(user_package, capsys):
    status, out, _ = _main(["--model", "cli_factories:healthy", "--input-shape", "3,8,8",
                            "--batch-size", "4", "--at", "0,2,4", "--json"], capsys)
    assert status == 0
    report = json.loads(out)
    assert [row["name"] for row in report["layers"]] == ["0", "2", "4"]


def test_a_batch_norm_resnet56_passes_backward_and_instance_norm_is_flagged(capsys):
    # The first block of a BatchNorm ResNet-56 gets many times the last block's weight
    # gradient, but at about 1.05 per weight layer over 54 of them: the command passes it.
    deep = ["--depth", "56", "--width", "8", "--batch-size", "16", "--input-shape", "3,16,16"]
    status, out, err = _main([*deep, "--json"], capsys)
    report = json.loads(out)
    assert status == 0 and report["ok"], (err, report["checks"])
    backward = report["checks"][2]
    assert (backward["property"], backward["status"]) == ("stable backward", "ok")
    assert backward["value"] == pytest.approx(report["metrics"]["gradient_rate"])
    assert report["metrics"]["gradient_ratio"] > report["thresholds"]["gradient_explosion_ratio"]
    assert report["metrics"]["gradient_rate"] < report["thresholds"]["gradient_rate_warning"]
    # Instance Normalization of the same network on the digits' 8x8 images (a few pixels per
    # channel in the last stage) grows its gradients about 1.1 per weight layer: flagged.
    pytest.importorskip("sklearn")
    small = ["--depth", "56", "--width", "8", "--batch-size", "32", "--norm", "in", "--data", "digits"]
    status, out, err = _main([*small, "--fail-on", "warning"], capsys)
    assert status == 1 and "stable backward" in out and "early gradients grow" in out, out
    assert "a verdict is a warning" in err or "a verdict is a failure" in err
