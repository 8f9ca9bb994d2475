"""Measured selection: the fastest correct backend per signature bucket, remembered in a tuning cache file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mistralrs_torch import ConfigError, PluginManager, QuantizedWeight, Runtime
from mistralrs_torch.runtime import explain_text
from mistralrs_torch.runtime._measure import TuningWarning, bucket

#: Two matmul backends for one feature: "slow" (higher dispatch priority, sleeps) and "fast"; "liar" is fastest
#: and wrong. Each counts its calls so a test can tell whether timing ran.
_SOURCE = '''
import time
import torch.nn.functional as F
from mistralrs_torch import FeatureManifest, Support, hookimpl

FEATURE = FeatureManifest(name="speedy", summary="timed matmuls", distribution="speedy-dist", provides=("matmul",))
CALLS = {"slow": 0, "fast": 0, "liar": 0}


class Backend:
    feature = "speedy"

    def __init__(self, name, priority, delay, offset):
        self.name, self.dispatch_priority, self.delay, self.offset = name, priority, delay, offset

    def supports(self, call):
        return Support(call.device == "cpu" and call.dtype == "float32", "float32 on cpu only")

    def linear(self, x, weight, bias=None):
        CALLS[self.name.split("-")[0]] += 1
        if self.delay:
            time.sleep(self.delay)
        return F.linear(x, weight, bias) + self.offset


@hookimpl
def mistralrs_features():
    return (FEATURE,)


@hookimpl
def mistralrs_matmul_backends(active):
    return (Backend("slow-matmul", 300, 0.004, 0.0), Backend("fast-matmul", 200, 0.0, 0.0),
            Backend("liar-matmul", 100, 0.0, 1.0)) if "speedy" in active else ()
'''


@pytest.fixture
def speedy(fake_plugin):
    entry_point = fake_plugin(_SOURCE, name="speedy")

    def runtime(tmp_path: Path, selection: str = "measured", **environ: str) -> Runtime:
        manager = PluginManager(entry_points=[entry_point], environ={})
        return Runtime.create(manager=manager, environ=environ, selection=selection,
                              tuning_cache=tmp_path / "tuning.json")

    runtime.module = lambda: __import__(entry_point.value)  # type: ignore[attr-defined]  # the test swaps the method for one that re-imports
    return runtime


def _linear(runtime: Runtime, rows: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(rows)
    return runtime.linear(torch.randn(rows, 16, generator=gen), torch.randn(8, 16, generator=gen))


def test_the_policy_is_validated() -> None:
    with pytest.raises(ConfigError, match="selection='fastest' is not a selection policy: choose one of priority, "
                                          "measured"):
        Runtime.create(environ={}, selection="fastest")
    with pytest.raises(ConfigError, match="MISTRALRS_SELECTION='x' is not a selection policy"):
        Runtime.create(environ={"MISTRALRS_SELECTION": "x"})


def test_priority_takes_the_first_and_measured_the_fastest_correct(speedy, tmp_path: Path) -> None:
    assert _linear(speedy(tmp_path / "p", "priority"), 2) is not None
    priority = speedy(tmp_path / "p", "priority")
    _linear(priority, 2)
    assert [b.chosen for b in priority.bindings] == ["slow-matmul"]
    measured = speedy(tmp_path)
    out = _linear(measured, 2)
    (binding,) = measured.bindings
    (choice,) = measured.tuner.measurements
    # The built-in cpu-matmul is a candidate too: either fast one may win, never the slow or the wrong one.
    assert binding.chosen == choice.winner == min(choice.times, key=choice.times.__getitem__)
    assert choice.winner in ("fast-matmul", "cpu-matmul") and not binding.is_fallback and binding.call.rows == 2
    assert choice.source == "measured"
    assert "slow-matmul" not in choice.times or choice.times["slow-matmul"] > choice.times[choice.winner]
    assert choice.dropped["liar-matmul"].startswith("wrong result: max error")
    gen = torch.Generator().manual_seed(2)
    x, w = torch.randn(2, 16, generator=gen), torch.randn(8, 16, generator=gen)
    torch.testing.assert_close(out, x @ w.T)
    text = explain_text(measured.explain())
    assert f"linear [float32 on cpu, in features 16, out features 8, rows 2] -> {choice.winner} (measured: " in text
    assert "liar-matmul dropped: wrong result" in text


def test_token_counts_share_a_bucket_so_decode_steps_do_not_tune_again(speedy, tmp_path: Path) -> None:
    assert [bucket(n) for n in (1, 2, 3, 4, 5, 8, 9)] == [1, 2, 4, 4, 8, 8, 16]
    runtime = speedy(tmp_path)
    for rows in (1, 1, 1, 3, 4, 4):
        _linear(runtime, rows)
    assert [b.call.rows for b in runtime.bindings] == [1, 4]
    assert len(runtime.tuner.measurements) == 2
    calls = dict(speedy.module().CALLS)
    _linear(runtime, 1)
    assert speedy.module().CALLS["slow"] == calls["slow"] and speedy.module().CALLS["liar"] == calls["liar"]


def test_each_weight_shape_is_tuned_on_its_own_and_backend_for_names_the_choice(speedy, tmp_path: Path) -> None:
    runtime = speedy(tmp_path)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, generator=gen)
    small, wide = torch.randn(8, 16, generator=gen), torch.randn(64, 16, generator=gen)
    for weight in (small, wide, small):
        runtime.linear(x, weight)
    # A projection and the lm_head at one token count are two signatures: the fastest kernel depends on the shape.
    assert [(b.call.in_features, b.call.out_features, b.call.rows) for b in runtime.bindings] == [(16, 8, 1),
                                                                                                  (16, 64, 1)]
    assert len(runtime.tuner.measurements) == 2
    linear = runtime.dispatchers()["linear"]
    assert [linear.backend_for(x, w) for w in (small, wide)] == [b.chosen for b in runtime.bindings]
    assert len(runtime.bindings) == 2  # naming the choice did not choose again


def test_the_cache_is_reused_and_invalidated_when_conditions_change(speedy, tmp_path: Path) -> None:
    _linear(speedy(tmp_path), 2)
    saved = json.loads((tmp_path / "tuning.json").read_text())
    assert saved["schema"] == "mistralrs.tuning/1" and saved["entries"]
    assert set(saved["conditions"]) == {"device", "torch", "plugins", "threads"}
    slow_calls = speedy.module().CALLS["slow"]
    warm = speedy(tmp_path)
    _linear(warm, 2)
    assert [m.source for m in warm.tuner.measurements] == ["cache"] and warm.tuner.seconds == 0
    assert speedy.module().CALLS["slow"] == slow_calls  # nothing timed
    saved["conditions"]["threads"] += 1
    (tmp_path / "tuning.json").write_text(json.dumps(saved))
    changed = speedy(tmp_path)
    _linear(changed, 2)
    assert [m.source for m in changed.tuner.measurements] == ["measured"]
    assert "threads changed" in changed.tuner.cache.notes[0]


@pytest.mark.parametrize("content", ["{not json", '{"schema": "something/9"}', "[]", '{"schema": "mistralrs.tuning/1", '
                                     '"entries": {"k": 3}}'])
def test_a_corrupt_or_foreign_cache_is_ignored_with_a_warning_and_rewritten(speedy, tmp_path: Path,
                                                                            content: str) -> None:
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "tuning.json").write_text(content)
    with pytest.warns(TuningWarning, match="ignored"):
        runtime = speedy(tmp_path)
    _linear(runtime, 2)
    assert runtime.bindings[0].chosen in ("fast-matmul", "cpu-matmul")
    assert json.loads((tmp_path / "tuning.json").read_text())["schema"] == "mistralrs.tuning/1"


def test_a_candidate_much_slower_than_the_best_is_dropped_early(speedy, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from mistralrs_torch.runtime import _measure

    runtime = speedy(tmp_path)
    runtime.tuner.repeats = 50
    # Runs too short to judge on one: checked once (its warm-up), then timed beside the fast ones and dropped
    # once two runs exceed 1.5x the best median, not after all 50.
    monkeypatch.setattr(_measure, "RELIABLE_RUN", 10.0)
    before = speedy.module().CALLS["slow"]
    _linear(runtime, 2)
    assert speedy.module().CALLS["slow"] - before == 3
    assert runtime.tuner.measurements[0].dropped["slow-matmul"].startswith("slower than the best")
    # A run long enough to time reliably in one go, and over 1.5**2 times the best check: its check was its
    # only run (the check runs the very call that is timed).
    monkeypatch.setattr(_measure, "RELIABLE_RUN", 0.001)
    before = speedy.module().CALLS["slow"]
    _linear(runtime, 16)
    assert speedy.module().CALLS["slow"] - before == 1
    assert runtime.tuner.measurements[-1].dropped["slow-matmul"] == ("slower than the best by more than 2.25x in "
                                                                     "its check")


def test_once_a_round_spends_the_budget_no_further_round_starts(speedy, tmp_path: Path) -> None:
    runtime = speedy(tmp_path)
    runtime.tuner.repeats, runtime.tuner.budget = 50, 0.0
    before = speedy.module().CALLS["fast"]
    _linear(runtime, 4)
    assert speedy.module().CALLS["fast"] - before == 2  # its check (the warm-up), then one timed round
    (choice,) = runtime.tuner.measurements
    assert choice.winner in ("fast-matmul", "cpu-matmul") and "liar-matmul" in choice.dropped


_TWIN = '''
import torch.nn.functional as F
from mistralrs_torch import FeatureManifest, Support, hookimpl

FEATURE = FeatureManifest(name="twin", summary="torch's own linear", distribution="twin-dist", provides=("matmul",))


class Backend:
    feature, name, dispatch_priority = "twin", "twin-matmul", 10
    linear = staticmethod(F.linear)

    def supports(self, call):
        return Support(call.device == "cpu", "cpu only")


@hookimpl
def mistralrs_features():
    return (FEATURE,)


@hookimpl
def mistralrs_matmul_backends(active):
    return (Backend(),) if "twin" in active else ()
'''


def test_backends_binding_the_same_kernel_are_one_candidate(fake_plugin, tmp_path: Path) -> None:
    manager = PluginManager(entry_points=[fake_plugin(_TWIN, name="twin")], environ={})
    runtime = Runtime.create(manager=manager, environ={}, selection="measured", tuning_cache=tmp_path / "t.json")
    _linear(runtime, 2)
    (choice,) = runtime.tuner.measurements
    # cpu-matmul binds torch's F.linear too: timing it beside twin-matmul would time one kernel twice; with one
    # kernel left there is nothing to time, as with one supporting backend.
    assert choice.winner == "twin-matmul" and choice.times == {}
    assert choice.dropped == {"cpu-matmul": "binds the same kernel as twin-matmul"}


def test_quantized_weights_are_prepared_by_the_fastest_correct_backend(tmp_path: Path) -> None:
    runtime = Runtime.create(environ={}, selection="measured", tuning_cache=tmp_path / "tuning.json")
    gen = torch.Generator().manual_seed(0)
    weight = QuantizedWeight(torch.randint(0, 16, (64, 128), generator=gen, dtype=torch.uint8),
                             torch.rand(64, 4, generator=gen) * 0.02, -torch.rand(64, 4, generator=gen) * 0.1, 4, 32)
    prepared = runtime.prepare_quantized(weight, torch.bfloat16)
    (choice,) = runtime.tuner.measurements
    assert {*choice.times, *choice.dropped} == {"cpu-blockq", "cpu-int4pack", "cpu-matmul"}
    assert prepared.backend == choice.winner
    x = torch.randn(3, 128, generator=gen).bfloat16()
    expected = x.double() @ weight.dequantize().double().T
    assert (runtime.quantized_linear(x, prepared).double() - expected).abs().max() < 0.05


def test_with_the_winner_cached_only_the_winner_prepares_the_weight(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    gen = torch.Generator().manual_seed(1)
    weight = QuantizedWeight(torch.randint(0, 16, (64, 128), generator=gen, dtype=torch.uint8),
                             torch.rand(64, 4, generator=gen) * 0.02, -torch.rand(64, 4, generator=gen) * 0.1, 4, 32)
    first = Runtime.create(environ={}, selection="measured", tuning_cache=tmp_path / "tuning.json")
    winner = first.prepare_quantized(weight, torch.bfloat16).backend
    runtime = Runtime.create(environ={}, selection="measured", tuning_cache=tmp_path / "tuning.json")
    prepared_by: list[str] = []
    for backend in runtime.dispatchers()["quantized_linear"].backends:
        original = backend.prepare_quantized
        monkeypatch.setattr(backend, "prepare_quantized", lambda *a, _o=original, _n=backend.name, **k: (
            prepared_by.append(_n), _o(*a, **k))[1])
    assert runtime.prepare_quantized(weight, torch.bfloat16).backend == winner
    assert prepared_by == [winner] and runtime.tuner.measurements[0].source == "cache"
