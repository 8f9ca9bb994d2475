"""Measured selection: time every backend that supports a call signature, check it once, bind the fastest.

Under ``selection="measured"`` (or MISTRALRS_SELECTION=measured) the first call
of a signature, with its token count rounded up to a power of two (so decode
steps do not tune again), checks each supporting backend once on that very
call against the op's float64 reference (computed once for all of them) with
the verification tolerances: a wrong one is never bound. The check is also
the warm-up, and its run a first sample: a run long enough to be timed
reliably in one go (RELIABLE_RUN) and slower than the best check by ``margin``
squared drops its candidate at once. The rest are timed in up to ``repeats``
rounds (one only, once a round has taken ``budget`` seconds) and keep their
median; a candidate is dropped as soon as its median is slower than the best
by ``margin``. Backends that bind the very same kernel are one candidate (the
first by priority stands for the others). With a single supporting backend,
or a single kernel, nothing is checked or timed.

Choices persist in a tuning cache file keyed by what makes a timing valid: the
device, torch's version, every plugin's version and the thread count. A file
written under other conditions is set aside (and rewritten), a corrupt one is
ignored with a warning; a cached winner is used only while it still supports
the call.
"""

from __future__ import annotations

import functools
import json
import statistics
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mistralrs_torch._settings import cache_home
from mistralrs_torch.ops import CallSpec, OpSpec, PreparedWeight, QuantizedWeight

SELECTIONS = ("priority", "measured")
TUNING_SCHEMA = "mistralrs.tuning/1"


#: A single run at least this long (seconds) is not moved by ``margin`` squared by timer or scheduling noise.
RELIABLE_RUN = 0.005

#: A prepared weight is timed on DECODE_PER_PREFILL one-token calls plus one call of PREFILL_ROWS tokens: a chat
#: turn (a prompt of 64 tokens, 64 new tokens) with its decoding scaled down by four to keep tuning cheap. The
#: prompt keeps its full 64 rows: kernels change strategy with the row count (cpu-blockq dequantizes into a
#: matrix product from 16 rows), and a scaled-down prompt hid cpu-blockq's 2x lead on 64+ rows from the tuner.
DECODE_PER_PREFILL = 16
PREFILL_ROWS = 64
#: ... but no prompt call does more multiply-adds than this (64 rows of a 4M-weight layer): an lm_head-sized
#: weight gets fewer rows, as in generation, where it sees only each sequence's last token; 64 rows of
#: SmolLM2's 28M-weight lm_head took 3.9 s to tune (the float64 reference and the dense candidate).
PREFILL_MACS = PREFILL_ROWS << 22


def prompt_rows(out_features: int, in_features: int) -> int:
    """The rows of the prompt call a prepared weight of this shape is timed on."""
    return max(1, min(PREFILL_ROWS, PREFILL_MACS // max(1, out_features * in_features)))


class TuningWarning(UserWarning):
    """The tuning cache file could not be used (corrupt, foreign, unwritable): tuning happens again."""


def bucket(rows: int) -> int:
    """``rows`` rounded up to a power of two (at least 1)."""
    return 1 << max(0, rows - 1).bit_length()


def default_cache_path(environ: Mapping[str, str]) -> Path:
    """MISTRALRS_TUNING_CACHE, else $XDG_CACHE_HOME/mistralrs-torch/tuning.json, else ~/.cache/..."""
    if environ.get("MISTRALRS_TUNING_CACHE", "").strip():
        return Path(environ["MISTRALRS_TUNING_CACHE"]).expanduser()
    return cache_home(environ) / "tuning.json"


@dataclass(frozen=True)
class Measurement:
    """One tuning: the candidates' median seconds, why others were dropped, the winner, what it cost."""

    op: str
    call: CallSpec
    times: Mapping[str, float]
    dropped: Mapping[str, str]
    winner: str
    seconds: float
    source: str  # "measured" or "cache"

    def describe(self) -> str:
        timed = ", ".join(f"{name} {seconds * 1e6:.1f} us" for name, seconds in sorted(self.times.items(),
                                                                                     key=lambda kv: kv[1]))
        dropped = "".join(f"; {name} dropped: {why}" for name, why in self.dropped.items())
        return (f"{self.op} [{self.call.describe()}] -> {self.winner} ({self.source}: {timed or 'no timings'}"
                f"{dropped})")


@dataclass
class TuningCache:
    """Winners by signature, valid for one device, torch, set of plugin versions and thread count."""

    path: Path | None
    conditions: dict[str, Any]
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path | None, conditions: dict[str, Any]) -> TuningCache:
        cache = cls(path, conditions)
        if path is None or not path.exists():
            return cache
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            valid = (isinstance(data, dict) and data.get("schema") == TUNING_SCHEMA
                     and isinstance(data.get("entries"), dict)
                     and all(isinstance(k, str) and isinstance(v, dict) and isinstance(v.get("winner"), str)
                             for k, v in data["entries"].items()))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            valid, data = False, None
            cache._note(f"the tuning cache {path} cannot be read ({type(exc).__name__}): ignored; it is rewritten "
                        "after the next tuning")
        if data is not None and not valid:
            cache._note(f"the tuning cache {path} is not a {TUNING_SCHEMA} file: ignored; it is rewritten after "
                        "the next tuning")
        elif valid and data.get("conditions") != conditions:
            changed = sorted(k for k in {*conditions, *(data.get("conditions") or {})}
                             if (data.get("conditions") or {}).get(k) != conditions.get(k))
            cache.notes.append(f"the tuning cache {path} was measured under other conditions ({', '.join(changed)} "
                               "changed): tuning again")
        elif valid:
            cache.entries = data["entries"]
        return cache

    def _note(self, text: str) -> None:
        self.notes.append(text)
        warnings.warn(text, TuningWarning, stacklevel=3)

    def get(self, key: str) -> dict[str, Any] | None:
        return self.entries.get(key)

    def put(self, key: str, measurement: Measurement) -> None:
        self.entries[key] = {"winner": measurement.winner, "times": dict(measurement.times),
                             "dropped": dict(measurement.dropped)}
        self.save()

    def save(self) -> None:
        if self.path is None:
            return
        data = {"schema": TUNING_SCHEMA, "conditions": self.conditions, "entries": self.entries}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_suffix(".tmp")
            temporary.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
            temporary.replace(self.path)  # never a half-written cache
        except OSError as exc:
            self._note(f"the tuning cache {self.path} cannot be written ({exc}): choices are kept in memory only")
            self.path = None


def _stopwatch(kernel: Callable[..., Any], device: str, laps: list[float]) -> Callable[..., Any]:
    """``kernel``, appending the seconds of each call (device work included) to ``laps``."""
    def timed(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        result = _synchronized(lambda: kernel(*args, **kwargs), device)()
        laps.append(time.perf_counter() - began)
        return result

    return timed


def _synchronized(action: Callable[[], Any], device: str) -> Callable[[], Any]:
    """``action`` that waits for the device to finish, so its time is the kernel's, not its launch's."""
    if device == "cpu":
        return action
    import torch

    def synced() -> Any:
        result = action()
        torch.accelerator.synchronize()
        return result

    return synced


class Tuner:
    """Times candidates for a signature and remembers the winners (in memory and in its cache)."""

    def __init__(self, cache: TuningCache, *, repeats: int = 5, margin: float = 1.5, budget: float = 0.1) -> None:
        self.cache, self.repeats, self.margin, self.budget = cache, repeats, margin, budget
        #: One per signature (key), in the order first met: the weights of many layers share a signature.
        self.measurements: list[Measurement] = []
        self._met: set[str] = set()

    @property
    def seconds(self) -> float:
        """Time spent tuning (cache hits cost nothing)."""
        return sum(m.seconds for m in self.measurements if m.source == "measured")

    def pick(self, spec: OpSpec, call: CallSpec, candidates: Sequence[tuple[Any, Callable[..., Any]]],
             args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Callable[..., Any]]:
        """The fastest correct of ``candidates`` (backend, kernel) for this call, measured on its arguments."""
        def run(kernel: Callable[..., Any]) -> Callable[[], Any]:
            return _synchronized(lambda: kernel(*args, **kwargs), call.device)

        @functools.cache
        def checked_args() -> tuple[Any, ...]:
            # An op writing into a tensor is judged on all of it, and a KV cache is allocated uninitialized: its
            # unwritten slots may hold NaN, which no kernel is asked to keep. They are judged as zeros.
            return tuple(a.nan_to_num(0.0, 0.0, 0.0) if i in spec.writes else a for i, a in enumerate(args))

        # testing's verifier is imported only when a check runs: a warm cache runs none.
        @functools.cache
        def expected() -> Any:  # the same for every candidate
            from mistralrs_torch.testing._verify import reference_output

            return reference_output(spec, checked_args(), kwargs)

        def check(kernel: Callable[..., Any]) -> tuple[str, float | None]:
            from mistralrs_torch.testing._verify import verify_call

            laps: list[float] = []
            problem = verify_call(spec, _stopwatch(kernel, call.device, laps), checked_args(), kwargs, call.dtype,
                                  expected())
            return problem, laps[0]  # the check ran the very work that is timed: its run is a first (cold) sample

        return self._tune(spec, call, self._key(spec, call), candidates, run, check)

    def pick_prepared(self, spec: OpSpec, call: CallSpec, candidates: Sequence[Any], weight: QuantizedWeight,
                      device: str) -> tuple[Any, Any]:
        """The fastest correct backend to prepare ``weight`` with, and its payload.

        A prepared weight keeps one layout for prefill and decode alike, so each candidate is timed on the work of a
        generation in miniature: ``DECODE_PER_PREFILL`` one-token calls and one call of :func:`prompt_rows` tokens
        (kernels that win at one token can lose badly on a prompt's rows, and the other way round).
        """
        inputs: list[Any] = []

        def timing_inputs() -> list[Any]:
            # Made only when a candidate is timed or checked: a weight whose winner is cached (every weight of a
            # model loaded with a warm cache) costs no random tensors at load.
            if not inputs:
                import torch

                generator = torch.Generator().manual_seed(0)
                inputs.extend(torch.randn(rows, weight.shape[1], generator=generator).to(
                    device=device, dtype=getattr(torch, call.dtype)) for rows in (1, prompt_rows(*weight.shape)))
            return inputs

        prepared: dict[str, PreparedWeight] = {}
        pairs = [(b, getattr(b, spec.name)) for b in candidates]

        def payload(kernel: Callable[..., Any]) -> PreparedWeight:
            # Prepared on first use: with the winner in the cache, only the winner prepares the weight.
            backend = next(b for b, k in pairs if k is kernel)
            if backend.name not in prepared:
                prepared[backend.name] = PreparedWeight(backend.name, getattr(backend, spec.prepare)(
                    weight, call, device), call, weight.shape)
            return prepared[backend.name]

        def run(kernel: Callable[..., Any]) -> Callable[[], Any]:
            weight_for_kernel = payload(kernel)
            one, prompt = timing_inputs()

            def generation() -> None:
                for _ in range(DECODE_PER_PREFILL):
                    kernel(one, weight_for_kernel)
                kernel(prompt, weight_for_kernel)

            return _synchronized(generation, call.device)

        @functools.cache
        def expected() -> list[Any]:
            from mistralrs_torch.testing._verify import reference_output

            return [reference_output(spec, (x, weight), {}) for x in timing_inputs()]

        def check(kernel: Callable[..., Any]) -> tuple[str, float | None]:
            from mistralrs_torch.testing._verify import verify_call

            weight_for_kernel = payload(kernel)
            # Two calls, not the timed generation in miniature: no sample to judge speed by.
            return "; ".join(problem for x, reference in zip(timing_inputs(), expected(), strict=True) if (
                problem := verify_call(spec, lambda x=x: kernel(x, weight_for_kernel), (), {}, call.dtype,
                                       reference))), None

        backend, kernel = self._tune(spec, call, self._key(spec, call), pairs, run, check)
        return backend, payload(kernel).payload

    @staticmethod
    def _key(spec: OpSpec, call: CallSpec) -> str:
        return f"{spec.name} [{call.describe()}]"

    def _tune(self, spec: OpSpec, call: CallSpec, key: str, candidates: Sequence[tuple[Any, Callable[..., Any]]],
              run: Callable[[Callable[..., Any]], Callable[[], Any]],
              check: Callable[[Callable[..., Any]], tuple[str, float | None]]) -> tuple[Any, Callable[..., Any]]:
        known = self.cache.get(key)
        names = [b.name for b, _ in candidates]
        if known is not None and known["winner"] in names:
            chosen = candidates[names.index(known["winner"])]
            if key in self._met:
                return chosen
            self._met.add(key)
            self.measurements.append(Measurement(spec.name, call, dict(known.get("times", {})),
                                                 dict(known.get("dropped", {})), known["winner"], 0.0, "cache"))
            return chosen
        start = time.perf_counter()
        dropped: dict[str, str] = {}
        distinct: list[tuple[Any, Callable[..., Any]]] = []
        for backend, kernel in candidates:
            twin = next((b.name for b, k in distinct if k == kernel), None)
            if twin is None:
                distinct.append((backend, kernel))
            else:
                # mkl-matmul and cpu-matmul both bind torch's F.linear in float32: timing one kernel twice measures
                # only noise, so the first (by priority) stands for both.
                dropped[backend.name] = f"binds the same kernel as {twin}"
        # One kernel left: nothing to choose, as with one supporting backend.
        times = self._check_and_time(spec, call, distinct, run, check, dropped) if len(distinct) > 1 else {}
        winner = min(times, key=lambda name: times[name]) if times else distinct[0][0].name
        measurement = Measurement(spec.name, call, times, dropped, winner, time.perf_counter() - start, "measured")
        self.measurements.append(measurement)
        self._met.add(key)
        self.cache.put(key, measurement)
        return candidates[names.index(winner)]

    def _check_and_time(self, spec: OpSpec, call: CallSpec, candidates: Sequence[tuple[Any, Callable[..., Any]]],
                        run: Callable[[Callable[..., Any]], Callable[[], Any]],
                        check: Callable[[Callable[..., Any]], tuple[str, float | None]],
                        dropped: dict[str, str]) -> dict[str, float]:
        """Median seconds of each correct candidate that was not dropped as slow (reasons into ``dropped``)."""
        checked: dict[str, float] = {}
        for backend, kernel in candidates:
            problem, seconds = check(kernel)
            if problem:
                dropped[backend.name] = f"wrong result: {problem}"
            elif seconds is not None:
                checked[backend.name] = seconds
        for name in [n for n, seconds in checked.items() if self._slow(seconds, min(checked.values()), 0)]:
            dropped[name] = f"slower than the best by more than {self.margin ** 2:g}x in its check"
        times = self._time({b.name: run(k) for b, k in candidates if b.name not in dropped}, dropped)
        if not times:
            from mistralrs_torch._errors import UnsupportedCallError

            raise UnsupportedCallError(f"{spec.name} [{call.describe()}]: no backend computed it within tolerance "
                                       f"({'; '.join(f'{name}: {why}' for name, why in dropped.items())}): disable "
                                       "the failing plugins (MISTRALRS_DISABLE_PLUGINS) and report them")
        return times

    def _time(self, actions: dict[str, Callable[[], Any]], dropped: dict[str, str]) -> dict[str, float]:
        """Median seconds of each (already warm) action, timed in rounds (one run of each per round, so a burst of
        load on a shared machine hits every candidate alike). A candidate whose median exceeds ``margin`` x the
        best median is dropped (into ``dropped``) and timed no more: from the second round on, or after the
        first when its run took at least RELIABLE_RUN and ``margin`` squared x the best (a slow kernel on a
        prompt's rows then costs one timed run, not a round of them). Once the rounds have taken ``budget``
        seconds, no further round starts: runs that long are timed well by one warm sample each."""
        samples: dict[str, list[float]] = {name: [] for name in actions}
        started = time.perf_counter()
        for round_ in range(self.repeats):
            if round_ >= 1 and time.perf_counter() - started >= self.budget:
                break
            for name in list(samples):
                began = time.perf_counter()
                actions[name]()
                samples[name].append(time.perf_counter() - began)
            if len(samples) < 2:  # a lone survivor has its sample; timing it further decides nothing
                break
            best = min(statistics.median(times) for times in samples.values())
            for name in [n for n, times in samples.items() if self._slow(statistics.median(times), best, round_)]:
                dropped[name] = f"slower than the best by more than {self.margin}x"
                del samples[name]
        return {name: statistics.median(times) for name, times in samples.items()}

    def _slow(self, median: float, best: float, round_: int) -> bool:
        if round_ == 0:
            return median >= RELIABLE_RUN and median > best * self.margin ** 2
        return median > best * self.margin
