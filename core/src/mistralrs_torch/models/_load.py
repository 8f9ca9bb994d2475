"""``load(path)``: a Hugging Face folder or a GGUF file, local only, into a Model on a runtime."""

from __future__ import annotations

import re
from os import PathLike
from pathlib import Path

import torch

from mistralrs_torch._errors import ConfigError, ModelLoadError
from mistralrs_torch.models._layers import Weight
from mistralrs_torch.models._llama import LlamaForCausalLM
from mistralrs_torch.models._model import Model
from mistralrs_torch.models._progress import Progress
from mistralrs_torch.models._sources import Source, check_complete, gguf_source, hf_source
from mistralrs_torch.ops import Communicator
from mistralrs_torch.runtime import Runtime
from mistralrs_torch.runtime._loading import TensorSlice

#: The dtypes a model runs in (activations and dense weights; quantized weights stay quantized).
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _dtype(dtype: torch.dtype | str | None, runtime: Runtime) -> torch.dtype:
    if dtype is None:
        # float32 on the CPU (exact, and as fast as 16-bit there without native bfloat16); bfloat16 on accelerators.
        return torch.float32 if runtime.device.torch_device == "cpu" else torch.bfloat16
    chosen = DTYPES.get(dtype) if isinstance(dtype, str) else dtype
    if chosen not in DTYPES.values():
        raise ConfigError(f"dtype {dtype!r} is not supported: choose one of {', '.join(DTYPES)}")
    assert chosen is not None
    return chosen


def _open(path: Path, raw: str, runtime: Runtime, dtype: torch.dtype) -> Source:
    if not path.exists():
        if _HUB_ID.match(raw) and not raw.startswith("."):
            raise ModelLoadError(
                f"{raw!r} is not a local path: models are read from local files only (no downloads). On a machine "
                f"with access, run `huggingface-cli download {raw} --local-dir DIR`, copy DIR here, then pass "
                "-m DIR (or a .gguf file)")
        raise ModelLoadError(f"{path} does not exist: pass a Hugging Face model folder or a .gguf file")
    if path.is_dir():
        return hf_source(path, runtime, dtype)
    return gguf_source(path, dtype)


def load(path: str | PathLike[str], *, runtime: Runtime | None = None,
         dtype: torch.dtype | str | None = None, communicator: Communicator | None = None) -> Model:
    """A model ready to generate, from a Hugging Face folder (config.json, safetensors, tokenizer.json) or a GGUF file.

    ``runtime`` defaults to ``Runtime.create(paged_attention=True)`` (decode reads a paged KV cache); ``dtype``
    (float32, bfloat16, float16) is the activations' and dense weights' type, by default float32 on the CPU and
    bfloat16 elsewhere. Quantized GGUF weights stay quantized. Raises ModelLoadError naming the file and the field
    when the checkpoint is missing, truncated or unsupported.

    The model is split over ``communicator``'s ranks (default: the runtime's, a world of one unless the process
    was launched as a rank of a job): each rank reads and holds its share (tensor parallelism), and every rank
    must then make the same calls. A model whose heads the ranks cannot split whole is a ConfigError.
    """
    runtime = runtime if runtime is not None else Runtime.create(paged_attention=True)
    if not runtime.paged_attention_enabled:
        raise ConfigError("the model decodes from a paged KV cache, but this runtime has paged attention off: create "
                          "it with Runtime.create(paged_attention=True) (or set MISTRALRS_PAGED_ATTN=1)")
    chosen = _dtype(dtype, runtime)
    raw = str(path)
    source = _open(Path(raw).expanduser(), raw, runtime, chosen)
    names = LlamaForCausalLM.weight_names(source.config)
    check_complete(source, names)
    progress = Progress(f"loading {source.path.name}", len(names))

    def weight(name: str, part: TensorSlice | None) -> Weight:
        value = source.weight(name, part)
        progress.advance()
        return value

    communicator = communicator if communicator is not None else runtime.communicator()
    try:
        network = LlamaForCausalLM(source.config, runtime, weight, chosen, communicator, str(source.path))
    finally:
        progress.close()
    return Model(network, source.tokenizer, source.path)
