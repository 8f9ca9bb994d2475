"""The model runner: Llama-family models from Hugging Face folders or GGUF files, run through the runtime's ops.

Imported on demand only (it imports torch, tokenizers, gguf and jinja2):
``from mistralrs_torch.models import load``.
"""

from mistralrs_torch.models._cache import KVCache
from mistralrs_torch.models._config import ModelConfig
from mistralrs_torch.models._engine import Engine, RequestOutput
from mistralrs_torch.models._load import DTYPES, load
from mistralrs_torch.models._model import Generation, Model
from mistralrs_torch.models._sampling import SamplingParams
from mistralrs_torch.models._tokenizer import TextStream, TextTokenizer

__all__ = ["DTYPES", "Engine", "Generation", "KVCache", "Model", "ModelConfig", "RequestOutput", "SamplingParams",
           "TextStream", "TextTokenizer", "load"]
