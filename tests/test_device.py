"""normlib.device: device choice and the size preset."""

import pytest
import torch

from normlib import device as nd


def test_size_preset_follows_env_and_defaults_to_small_on_cpu(monkeypatch):
    monkeypatch.delenv("NORMLIB_SIZE", raising=False)
    monkeypatch.setenv("NORMLIB_DEVICE", "cpu")
    assert nd.size_preset() == "small"
    monkeypatch.setenv("NORMLIB_SIZE", "full")
    assert nd.size_preset() == "full" and nd.pick(1, 2) == 2


def test_bad_size_preset_raises(monkeypatch):
    monkeypatch.setenv("NORMLIB_SIZE", "huge")
    with pytest.raises(ValueError, match="NORMLIB_SIZE"):
        nd.size_preset()


def test_device_override_and_unavailable_device(monkeypatch):
    monkeypatch.setenv("NORMLIB_DEVICE", "cpu")
    assert nd.default_device() == torch.device("cpu")
    monkeypatch.setenv("NORMLIB_DEVICE", "not-a-device")
    with pytest.raises(ValueError, match="NORMLIB_DEVICE"):
        nd.default_device()
    if not torch.cuda.is_available():
        monkeypatch.setenv("NORMLIB_DEVICE", "cuda")
        with pytest.raises(ValueError, match="CUDA is not available"):
            nd.default_device()


def test_seed_everything_makes_torch_reproducible():
    nd.seed_everything(5)
    a = torch.randn(3)
    nd.seed_everything(5)
    assert torch.equal(a, torch.randn(3))
    with pytest.raises(ValueError):
        nd.seed_everything(-1)


@pytest.mark.parametrize(("cuda", "mps", "expected"), [
    (True, True, "cuda"), (False, True, "mps"), (False, False, "cpu"), (True, False, "cuda"),
])
def test_default_device_prefers_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected):
    monkeypatch.delenv("NORMLIB_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(nd, "_mps_available", lambda: mps)
    assert nd.default_device().type == expected


@pytest.mark.parametrize(("cuda", "mps", "expected"), [
    (True, False, "full"), (False, True, "small"), (False, False, "small"),
])
def test_size_preset_is_full_only_on_a_cuda_device(monkeypatch, cuda, mps, expected):
    monkeypatch.delenv("NORMLIB_DEVICE", raising=False)
    monkeypatch.delenv("NORMLIB_SIZE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(nd, "_mps_available", lambda: mps)
    assert nd.size_preset() == expected


def test_size_override_wins_over_the_device_default(monkeypatch):
    monkeypatch.delenv("NORMLIB_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("NORMLIB_SIZE", "small")
    assert nd.size_preset() == "small" and nd.pick(small=1, full=2) == 1
