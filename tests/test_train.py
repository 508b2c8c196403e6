"""normlib.train: the SGD loop, divergence detection, the learning-rate search and the cache."""

import json
import math

import pytest
import torch
from torch import nn

import normlib.train as nt
from normlib.data import Split
from normlib.train import ResultCache, TrainConfig, learning_rate_at, source_hash, train

# A float64 MLP on 256 digits: 8 steps per epoch, a few milliseconds per run.
TINY = dict(model="mlp", depth=2, width=16, norm="bn", batch_size=32, lr=0.8, epochs=3,
            train_samples=256, dtype="float64")
CPU = torch.device("cpu")


def tiny(**changes) -> TrainConfig:
    return TrainConfig(**{**TINY, **changes})


@pytest.fixture
def counted_runs(monkeypatch):
    """Counts the runs that actually train (cache misses)."""
    calls = []
    real = nt._run

    def counting(config, *args, **kwargs):
        calls.append(config)
        return real(config, *args, **kwargs)

    monkeypatch.setattr(nt, "_run", counting)
    return calls


def test_loss_decreases_on_a_tiny_problem():
    run = train(tiny(), cache=False, progress=False, device=CPU)
    assert not run.diverged and run.diverged_step is None
    assert len(run.epoch_loss) == 3 and len(run.step_loss) == 3 * 8
    # Digits are easy: 24 steps of an MLP take the loss well below a uniform guess's ln 10 = 2.3
    # (it reaches about 0.8; margin 2x), and far above the 10% accuracy of a guess.
    assert run.epoch_loss[-1] < 0.5 * math.log(10), run.epoch_loss
    assert run.epoch_loss[0] > run.epoch_loss[1] > run.epoch_loss[2]
    assert run.test_accuracy > 0.5 and run.stable


def test_training_loop_matches_a_hand_written_sgd_loop():
    cfg = tiny(schedule="constant", epochs=2, weight_decay=1e-3, momentum=0.8, batch_size=64)
    run = train(cfg, cache=False, progress=False, device=CPU)

    data = nt.load_dataset("digits")
    x = data.x_train[:256].double()
    y = data.y_train[:256]
    torch.manual_seed(cfg.seed)
    order = torch.Generator().manual_seed(cfg.seed)
    model = nt.build_model(cfg, x.shape[1:], 10).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.8 * 64 / 128, momentum=0.8, weight_decay=1e-3)
    expected = []
    for _ in range(2):
        perm = torch.randperm(256, generator=order)
        for b in range(4):
            idx = perm[b * 64:(b + 1) * 64]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            expected.append(loss.item())
            opt.zero_grad()
            loss.backward()
            opt.step()
    # Same operations in the same order in float64: equal to rounding (tolerance 1e-12).
    assert run.step_loss == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_same_seed_reproduces_the_run_and_another_seed_does_not():
    a = train(tiny(epochs=1), cache=False, progress=False, device=CPU)
    b = train(tiny(epochs=1), cache=False, progress=False, device=CPU)
    c = train(tiny(epochs=1, seed=1), cache=False, progress=False, device=CPU)
    assert a.step_loss == b.step_loss
    assert a.step_loss != c.step_loss


def test_learning_rate_is_scaled_with_batch_size_and_follows_a_cosine():
    cfg = TrainConfig(lr=0.4, batch_size=32, reference_batch_size=128)
    assert cfg.effective_lr == pytest.approx(0.1)
    total = 40
    for t in (0, 7, 20, 33):
        assert learning_rate_at(cfg, t, total) == pytest.approx(0.05 * (1 + math.cos(math.pi * t / total)))
    assert learning_rate_at(cfg.replace(schedule="constant"), 33, total) == pytest.approx(0.1)


def test_an_absurd_learning_rate_is_detected_as_divergence_and_training_stops():
    run = train(tiny(lr=1e5, schedule="constant", norm="none"), cache=False, progress=False,
                device=CPU)
    assert run.diverged and not run.stable
    assert run.diverged_step is not None and run.diverged_step < 10
    # Training stops at the divergent step: nothing is recorded after it.
    assert len(run.step_loss) == run.diverged_step + 1
    last = run.step_loss[-1]
    assert not math.isfinite(last) or last > 5 * max(run.initial_loss, math.log(10))
    assert run.final_loss == math.inf and math.isnan(run.test_accuracy)


def test_a_non_finite_first_loss_is_divergence_at_step_zero():
    data = nt.load_dataset("digits")
    x = data.x_train[:64].clone()
    x[:] = float("nan")
    bad = Split(x, data.y_train[:64], data.x_test[:8], data.y_test[:8], 10, "nan-digits")
    run = train(tiny(train_samples=None), data=bad, cache=False, progress=False, device=CPU)
    assert run.diverged and run.diverged_step == 0


def test_a_run_stuck_at_chance_level_is_not_stable():
    stuck = nt.RunResult(config={}, step_loss=[2.4, 2.31], epoch_loss=[2.31], initial_loss=2.4,
                         num_classes=10, diverged=False, diverged_step=None,
                         test_accuracy=0.1, seconds=0.0)
    trained = nt.RunResult(config={}, step_loss=[2.4, 1.0], epoch_loss=[1.0], initial_loss=2.4,
                           num_classes=10, diverged=False, diverged_step=None,
                           test_accuracy=0.8, seconds=0.0)
    assert not stuck.stable and trained.stable
    with pytest.raises(ValueError, match="progress"):
        trained.is_stable(progress=1.5)


def test_cache_reuses_a_result_without_training(tmp_path, counted_runs):
    cache = ResultCache(tmp_path, code_hash="code-v1")
    first = train(tiny(), cache=cache, progress=False, device=CPU)
    second = train(tiny(), cache=cache, progress=False, device=CPU)
    assert len(counted_runs) == 1
    assert not first.from_cache and second.from_cache
    assert second.step_loss == first.step_loss and second.epoch_loss == first.epoch_loss
    assert second.test_accuracy == first.test_accuracy
    assert len(list(tmp_path.glob("*.json"))) == 1


def test_cache_is_invalidated_by_a_config_change_or_a_code_change(tmp_path, counted_runs):
    train(tiny(), cache=ResultCache(tmp_path, code_hash="code-v1"), progress=False, device=CPU)
    train(tiny(lr=0.05), cache=ResultCache(tmp_path, code_hash="code-v1"), progress=False, device=CPU)
    train(tiny(norm_kwargs={"eps": 1e-3}), cache=ResultCache(tmp_path, code_hash="code-v1"),
          progress=False, device=CPU)
    changed = train(tiny(), cache=ResultCache(tmp_path, code_hash="code-v2"), progress=False,
                    device=CPU)
    assert len(counted_runs) == 4 and not changed.from_cache


def test_cache_is_invalidated_by_other_data_under_the_same_dataset_name(tmp_path, counted_runs):
    cache = ResultCache(tmp_path, code_hash="code-v1")
    digits = nt.load_dataset("digits")
    first = train(tiny(), data=digits, cache=cache, progress=False, device=CPU)
    negated = Split(-digits.x_train, digits.y_train, -digits.x_test, digits.y_test,
                    digits.num_classes, digits.name)
    other = train(tiny(), data=negated, cache=cache, progress=False, device=CPU)
    assert len(counted_runs) == 2 and not other.from_cache
    assert other.step_loss != first.step_loss
    # The default data of the config is the same split: the same key, read from the cache.
    again = train(tiny(), cache=cache, progress=False, device=CPU)
    assert again.from_cache and again.step_loss == first.step_loss and len(counted_runs) == 2
    assert len(list(tmp_path.glob("*.json"))) == 2


def test_data_fingerprint_sees_every_tensor_and_an_in_place_change():
    x, y = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    split = Split(x, y, x[:2].clone(), y[:2].clone(), 3, "toy")
    h = nt.data_fingerprint(split)
    assert h == nt.data_fingerprint(Split(x.clone(), y.clone(), x[:2].clone(), y[:2].clone(), 3,
                                          "renamed"))
    changes = [
        Split(x, y.roll(1), split.x_test, split.y_test, 3, "toy"),
        Split(x, y, split.x_test, split.y_test.flip(0), 3, "toy"),
        Split(x, y, split.x_test, split.y_test, 4, "toy"),
        Split(x.double(), y, split.x_test, split.y_test, 3, "toy"),
        Split(x.reshape(6, 3, 1), y, split.x_test, split.y_test, 3, "toy"),
    ]
    assert len({h, *map(nt.data_fingerprint, changes)}) == 1 + len(changes)
    # The fingerprint is remembered per tensor, but not across an in-place edit or for a
    # new tensor in the place of a freed one.
    x[0, 0] += 1.0
    edited = nt.data_fingerprint(split)
    assert edited != h
    first = nt.data_fingerprint(Split(x, torch.tensor([0, 0, 0, 1, 1, 1]), split.x_test,
                                      split.y_test, 3, "toy"))
    second = nt.data_fingerprint(Split(x, torch.tensor([1, 1, 1, 0, 0, 0]), split.x_test,
                                       split.y_test, 3, "toy"))
    assert first != second
    with pytest.raises(TypeError, match="Split"):
        nt.data_fingerprint((x, y))


def test_a_diverged_run_round_trips_through_the_cache(tmp_path):
    cache = ResultCache(tmp_path, code_hash="x")
    cfg = tiny(lr=1e5, schedule="constant", norm="none")
    first = train(cfg, cache=cache, progress=False, device=CPU)
    again = train(cfg, cache=cache, progress=False, device=CPU)
    assert again.from_cache and again.diverged and again.diverged_step == first.diverged_step
    assert math.isnan(again.test_accuracy) and again.final_loss == math.inf


def test_an_unreadable_cache_file_is_a_miss(tmp_path, counted_runs):
    cache = ResultCache(tmp_path, code_hash="x")
    cfg = tiny(epochs=1)
    cache.path(cfg, CPU).write_text("{not json")
    run = train(cfg, cache=cache, progress=False, device=CPU)
    assert not run.from_cache and len(counted_runs) == 1
    assert json.loads(cache.path(cfg, CPU).read_text())["step_loss"] == run.step_loss


def test_source_hash_changes_with_any_module_and_ignores_bytecode(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.py").write_text("y = 2\n")
    h0 = source_hash(tmp_path)
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "a.cpython.py").write_text("junk")
    assert source_hash(tmp_path) == h0
    (tmp_path / "sub" / "b.py").write_text("y = 3\n")
    h1 = source_hash(tmp_path)
    (tmp_path / "c.py").write_text("")
    h2 = source_hash(tmp_path)
    assert len({h0, h1, h2}) == 3
    with pytest.raises(ValueError, match="root"):
        source_hash(tmp_path / "missing")


def test_default_cache_key_includes_the_library_source(tmp_path):
    cache = ResultCache(tmp_path)
    assert cache.code_hash == source_hash()
    other = ResultCache(tmp_path, code_hash="different")
    assert cache.key(tiny(), CPU) != other.key(tiny(), CPU)


def test_cache_dir_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("NORMLIB_CACHE_DIR", str(tmp_path / "c"))
    assert nt.cache_dir() == tmp_path / "c"
    assert ResultCache(code_hash="x").directory == tmp_path / "c" / "train"
    monkeypatch.delenv("NORMLIB_CACHE_DIR")
    assert nt.cache_dir().name == "normlib"


def test_largest_stable_lr_goes_down_the_grid_and_stops_at_the_first_stable_rate(counted_runs):
    search = nt.largest_stable_lr(tiny(schedule="constant", norm="none"), [0.05, 1e5, 0.4],
                                  cache=False, progress=False, device=CPU)
    assert search.lr == 0.4
    assert [lr for lr, _ in search.tried] == [1e5, 0.4]
    assert [ok for _, ok in search.tried] == [False, True]
    assert search.runs == [search.probes[-1]] and len(counted_runs) == 2


def test_largest_stable_lr_needs_every_seed_to_be_stable(monkeypatch):
    # Seed 1 is made to fail at the larger rate only: the search must step down.
    real = nt._run

    def seed_one_fails_at_large_rates(config, *args, **kwargs):
        if config.seed == 1 and config.lr > 0.5:
            config = config.replace(lr=1e5, schedule="constant")
        return real(config, *args, **kwargs)

    monkeypatch.setattr(nt, "_run", seed_one_fails_at_large_rates)
    search = nt.largest_stable_lr(tiny(), [0.8, 0.4], seeds=(0, 1), cache=False, progress=False,
                                  device=CPU)
    assert search.tried == [(0.8, False), (0.4, True)]
    assert search.lr == 0.4 and [r.config["seed"] for r in search.runs] == [0, 1]
    assert len(search.probes) == 4


def test_probe_epochs_search_short_then_train_the_seeds_in_full(counted_runs):
    search = nt.largest_stable_lr(tiny(epochs=3), [0.8], seeds=(0, 1), probe_epochs=2,
                                  cache=False, progress=False, device=CPU)
    assert [c.epochs for c in counted_runs] == [2, 2, 3, 3]
    assert all(len(r.epoch_loss) == 3 for r in search.runs)


def test_largest_stable_lr_reports_none_when_every_rate_fails():
    search = nt.largest_stable_lr(tiny(schedule="constant", norm="none"), [1e5, 1e6], cache=False,
                                  progress=False, device=CPU)
    assert search.lr is None and search.runs == [] and len(search.probes) == 2


def test_largest_stable_lr_rejects_an_empty_or_non_positive_grid():
    for bad in ([], [0.1, 0.0], [float("nan")]):
        with pytest.raises(ValueError, match="lrs"):
            nt.largest_stable_lr(tiny(), bad, cache=False)
    with pytest.raises(ValueError, match="seeds"):
        nt.largest_stable_lr(tiny(), [0.1], seeds=[], cache=False)


def test_training_map_reuses_the_search_run_as_the_first_seed(tmp_path, counted_runs):
    cache = ResultCache(tmp_path, code_hash="x")
    configs = [tiny(norm="bn"), tiny(norm="none", epochs=2)]
    entries = nt.training_map(configs, [1e5, 0.8], seeds=(0, 1), cache=cache, progress=False,
                              device=CPU)
    # Per config: one divergent probe, the stable probe (= seed 0) and seed 1.
    assert len(counted_runs) == 6
    assert all(e.search.lr == 0.8 and len(e.runs) == 2 for e in entries)
    assert [r.config["seed"] for r in entries[0].runs] == [0, 1]
    again = nt.training_map(configs, [1e5, 0.8], seeds=(0, 1), cache=cache, progress=False,
                            device=CPU)
    assert len(counted_runs) == 6 and all(r.from_cache for e in again for r in e.runs)

    frame = nt.results_frame(entries)
    assert list(frame["norm"]) == ["bn", "bn", "none", "none"]
    assert (frame["lr"] == 0.8).all() and not frame["diverged"].any()
    curves = nt.curves_frame(entries)
    assert len(curves) == 2 * (3 + 1) + 2 * (2 + 1)
    assert set(curves.columns) >= {"architecture", "norm", "batch_size", "seed", "epoch", "loss"}


def test_a_configuration_without_a_stable_rate_has_one_row_and_no_curve():
    entries = nt.training_map([tiny(schedule="constant", norm="none", epochs=1)], [1e5],
                              seeds=(0, 1), cache=False, progress=False, device=CPU)
    assert entries[0].runs == []
    frame = nt.results_frame(entries)
    assert len(frame) == 1 and bool(frame["diverged"].iloc[0]) and math.isnan(frame["lr"].iloc[0])
    assert nt.curves_frame(entries).empty


@pytest.mark.parametrize(
    "changes, name",
    [
        ({"model": "transformer"}, "model"),
        ({"dataset": "imagenet"}, "dataset"),
        ({"schedule": "linear"}, "schedule"),
        ({"dtype": "float16"}, "dtype"),
        ({"depth": 0}, "depth"),
        ({"batch_size": -4}, "batch_size"),
        ({"lr": 0.0}, "lr"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"seed": -1}, "seed"),
        ({"divergence_factor": 1.0}, "divergence_factor"),
        ({"train_samples": 8}, "train_samples"),
        ({"model": "vgg", "skipinit": True}, "skipinit"),
        ({"model": "resnet", "depth": 21}, "depth"),
    ],
)
def test_config_rejects_bad_arguments_naming_them(changes, name):
    with pytest.raises(ValueError, match=name):
        tiny(**changes)


def test_config_and_train_reject_wrong_types():
    with pytest.raises(TypeError, match="epochs must be a positive int, got 1.5"):
        tiny(epochs=1.5)
    with pytest.raises(TypeError, match="norm"):
        tiny(norm=None)
    with pytest.raises(TypeError, match="config"):
        train({"model": "mlp"})
    with pytest.raises(TypeError, match="cache"):
        train(tiny(), cache="yes")
    with pytest.raises(TypeError, match="data must be a normlib.data.Split"):
        train(tiny(), data=(torch.zeros(4, 2), torch.zeros(4)), cache=False)


def test_a_batch_larger_than_the_training_set_is_rejected_before_training():
    data = nt.load_dataset("digits")
    small = Split(data.x_train[:16], data.y_train[:16], data.x_test[:4], data.y_test[:4], 10, "d16")
    with pytest.raises(ValueError, match="batch_size"):
        train(tiny(train_samples=None), data=small, cache=False)


def test_cnn_configs_build_the_book_architectures():
    vgg = nt.build_model(TrainConfig(model="vgg", depth=10, norm="gn", norm_kwargs={"group_size": 4}),
                         (1, 8, 8), 10)
    res = nt.build_model(TrainConfig(model="resnet", depth=20, skipinit=True), (1, 8, 8), 10)
    assert len(vgg.layers) == 10 and len(res.blocks) == 9
    assert all(b.alpha.item() == 0.0 for b in res.blocks)
    assert vgg(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert TrainConfig(model="resnet", depth=20, skipinit=True).architecture == "ResNet-20 SkipInit"


def test_progress_bars_are_text_on_request_and_silent_when_not_on_a_terminal(capsys):
    train(tiny(epochs=1), cache=False, progress=None, device=CPU)
    assert capsys.readouterr().err == ""  # pytest's capture is not a terminal
    train(tiny(epochs=1), cache=False, progress=True, device=CPU)
    assert "MLP-2 bn B=32" in capsys.readouterr().err


def test_source_hash_ignores_the_presentation_modules_only(tmp_path):
    (tmp_path / "train.py").write_text("x = 1\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "widgets.py").write_text("z = 1\n")  # not top-level: counted
    h0 = source_hash(tmp_path)
    for name in ("plotting.py", "widgets.py", "explorer.py"):
        (tmp_path / name).write_text("style = 'new'\n")
        assert source_hash(tmp_path) == h0, name
    (tmp_path / "sub" / "widgets.py").write_text("z = 2\n")
    assert source_hash(tmp_path) != h0
