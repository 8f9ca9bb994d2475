"""The sampler and stop strings, unit by unit, against direct float64 computations written out here.

The filtered distribution (temperature, top-k, top-p, min-p) is computed
again in plain Python floats token by token; the repetition penalty from its
formula; a seeded draw from the documented rule (the k-th float64 of
torch.rand on a generator seeded with the seed, then the first token whose
cumulative probability exceeds it). Both sides work in float64, so they
agree to 1e-12; the data is checked to keep every top-p cut further than
1e-9 from its threshold, so the kept sets are decided by the rule, not by
rounding.
"""

from __future__ import annotations

import math

import pytest
import torch

from mistralrs_torch import InputError
from mistralrs_torch.models import SamplingParams
from mistralrs_torch.models._sampling import SamplingState, filtered_probabilities, penalize, sample
from mistralrs_torch.models._stops import StopText

VOCAB = 40
# (temperature, top_k, top_p, min_p) per row, all in one call: each row must get its own parameters.
ROWS = [(1.0, 0, 1.0, 0.0), (0.7, 5, 1.0, 0.0), (1.3, 0, 0.6, 0.0), (1.0, 0, 1.0, 0.2), (0.9, 12, 0.85, 0.05),
        (2.0, 1, 1.0, 0.0), (0.5, 100, 0.3, 0.0), (1.0, 0, 0.95, 0.0)]


def _logits(rows: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, VOCAB, generator=generator, dtype=torch.float64)


def _softmax(x: list[float]) -> list[float]:
    top = max(x)
    e = [math.exp(v - top) if v != -math.inf else 0.0 for v in x]
    total = sum(e)
    return [v / total for v in e]


def _reference(row: list[float], temperature: float, top_k: int, top_p: float, min_p: float) -> list[float]:
    """The filtered distribution of one row, token by token (the rule in SamplingParams' words)."""
    x = [v / temperature for v in row]
    if top_k > 0:
        kth = sorted(x, reverse=True)[min(top_k, len(x)) - 1]
        x = [v if v >= kth else -math.inf for v in x]
    if top_p < 1:
        p = _softmax(x)
        before, keep = 0.0, set()
        for i in sorted(range(len(x)), key=lambda i: -p[i]):
            assert abs(before - top_p) > 1e-9  # the data decides, not rounding
            if before < top_p:
                keep.add(i)
            before += p[i]
        x = [v if i in keep else -math.inf for i, v in enumerate(x)]
    if min_p > 0:
        p = _softmax(x)
        x = [v if p[i] >= min_p * max(p) else -math.inf for i, v in enumerate(x)]
    return _softmax(x)


def _columns(rows: list[tuple[float, int, float, float]]) -> tuple[torch.Tensor, ...]:
    t, k, p, m = zip(*rows, strict=True)
    return (torch.tensor(t, dtype=torch.float64), torch.tensor(k), torch.tensor(p, dtype=torch.float64),
            torch.tensor(m, dtype=torch.float64))


def test_filtered_distribution_equals_the_rule_computed_token_by_token() -> None:
    logits = _logits(len(ROWS))
    probs = filtered_probabilities(logits, *_columns(ROWS))
    for i, params in enumerate(ROWS):
        expected = torch.tensor(_reference(logits[i].tolist(), *params), dtype=torch.float64)
        assert float((probs[i] - expected).abs().max()) < 1e-12, params
    kept = (probs > 0).sum(-1).tolist()
    assert kept[0] == VOCAB and kept[1] == 5 and kept[5] == 1  # no filter; top-k 5; top-k 1
    assert 1 < kept[2] < VOCAB and 1 < kept[3] < VOCAB and kept[4] <= 12 and kept[7] < VOCAB  # p and min-p cut


def test_repetition_penalty_divides_positive_and_multiplies_negative_seen_logits() -> None:
    logits = torch.tensor([[2.0, -2.0, 0.0, 3.0], [1.0, -1.0, 5.0, -4.0]])
    seen = torch.tensor([[True, True, True, False], [False, True, True, False]])
    out = penalize(logits, seen, torch.tensor([2.0, 0.5]))
    assert out.tolist() == [[1.0, -4.0, 0.0, 3.0], [1.0, -0.5, 10.0, -4.0]]


def _state(seed: int | None = None, **params: float) -> SamplingState:
    return SamplingState(SamplingParams(seed=seed, **params), VOCAB, [], torch.device("cpu"))  # type: ignore[arg-type]


def test_a_seeded_draw_picks_the_token_the_documented_rule_gives() -> None:
    logits = _logits(len(ROWS), seed=1)
    states = [_state(seed=100 + i, temperature=t, top_k=k, top_p=p, min_p=m) for i, (t, k, p, m) in enumerate(ROWS)]
    uniforms = [torch.Generator().manual_seed(100 + i) for i in range(len(ROWS))]
    for _ in range(5):  # the k-th call takes each row's k-th draw
        chosen = sample(logits.float(), states)
        for i, params in enumerate(ROWS):
            probs = _reference(logits[i].float().double().tolist(), *params)
            u = float(torch.rand((), generator=uniforms[i], dtype=torch.float64))
            cumulative, expected = 0.0, None
            for token, p in enumerate(probs):
                cumulative += p
                if cumulative > u and expected is None:
                    expected = token
            assert chosen[i] == expected, (i, u)


def test_temperature_zero_and_top_k_one_are_greedy() -> None:
    logits = _logits(6, seed=2).float()
    greedy = logits.argmax(-1).tolist()
    assert sample(logits, [_state() for _ in range(6)]) == greedy
    assert sample(logits, [_state(seed=i, temperature=1.5, top_k=1) for i in range(6)]) == greedy


def test_a_repetition_penalty_changes_a_greedy_choice_away_from_a_seen_token() -> None:
    logits = torch.tensor([[3.0, 2.5, 1.6, -1.0]])
    penalized = SamplingState(SamplingParams(repetition_penalty=2.0), 4, [0], torch.device("cpu"))
    assert sample(logits, [penalized]) == [1]  # 3 / 2 < 2.5
    penalized.saw(1)
    assert sample(logits, [penalized]) == [2]  # 1.5 and 1.25 < 1.6


@pytest.mark.parametrize(("change", "message"), [
    ({"temperature": -0.1}, r"temperature=-0\.1 is out of range: give a number >= 0"),
    ({"temperature": math.nan}, r"temperature=nan is out of range"),
    ({"top_p": 0.0}, r"top_p=0\.0 is out of range: give a number in \(0, 1\]"),
    ({"top_p": 1.5}, r"top_p=1\.5 is out of range"),
    ({"top_k": -1}, r"top_k=-1 is out of range: give a whole number >= 0"),
    ({"min_p": 1.1}, r"min_p=1\.1 is out of range: give a number in \[0, 1\]"),
    ({"repetition_penalty": 0.0}, r"repetition_penalty=0\.0 is out of range: give a number > 0"),
    ({"seed": -1}, r"seed=-1 is out of range: give a whole number in 0\.\.18446744073709551615"),
    ({"max_tokens": 0}, r"max_tokens=0 is out of range: give a whole number >= 1"),
    ({"stop": ("ok", "")}, r"stop=\('ok', ''\) holds '': give non-empty strings"),
    ({"stop_token_ids": (3, -2)}, r"stop_token_ids=\(3, -2\) holds -2"),
    ({"ignore_eos": 1}, r"ignore_eos=1 is not a bool: give True or False"),
])
def test_every_sampling_parameter_is_range_checked_by_name(change: dict[str, object], message: str) -> None:
    with pytest.raises(InputError, match=message):
        SamplingParams(**change)  # type: ignore[arg-type]


def test_one_bare_stop_string_is_one_stop_string() -> None:
    assert SamplingParams(stop="END").stop == ("END",)  # type: ignore[arg-type]


# -- stop strings -----------------------------------------------------------------------------------------------


def _feed(stops: list[str], pieces: list[str]) -> tuple[list[str], bool, str]:
    matcher = StopText(stops)
    shown, stopped = [], False
    for piece in pieces:
        out, stopped = matcher.push(piece)
        shown.append(out)
        if stopped:
            break
    return shown, stopped, "" if stopped else matcher.flush()


def test_a_stop_string_across_pieces_is_cut_and_never_shown() -> None:
    shown, stopped, rest = _feed(["</end>"], ["Hello", " wor", "ld</", "en", "d> more"])
    assert stopped and "".join(shown) == "Hello world" and rest == ""
    assert shown == ["Hello", " wor", "ld", "", ""]  # "</" and "</en" held back until the match


def test_held_text_is_released_once_it_cannot_start_a_stop_string() -> None:
    shown, stopped, rest = _feed(["STOP"], ["a S", "T", "x", "ST"])
    assert not stopped and shown == ["a ", "", "STx", ""] and rest == "ST"


def test_the_earliest_of_several_stop_strings_wins() -> None:
    shown, stopped, _ = _feed(["cd", "bcx", "\n\n"], ["ab", "cdef"])
    assert stopped and "".join(shown) == "ab"
    shown, stopped, _ = _feed(["xyz", "\n\n"], ["one\n", "\ntwo xyz"])
    assert stopped and "".join(shown) == "one"


def test_without_stop_strings_everything_is_shown_at_once() -> None:
    shown, stopped, rest = _feed([], ["a", "b"])
    assert shown == ["a", "b"] and not stopped and rest == ""
