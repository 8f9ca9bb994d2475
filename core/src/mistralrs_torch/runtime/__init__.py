"""The runtime: ops bound to backends, with explain and no silent fallback."""

from mistralrs_torch.runtime._dispatch import Binding, Dispatcher
from mistralrs_torch.runtime._explain import explain_text
from mistralrs_torch.runtime._loading import TensorSlice, load_safetensors
from mistralrs_torch.runtime._runtime import Runtime

__all__ = ["Binding", "Dispatcher", "Runtime", "TensorSlice", "explain_text", "load_safetensors"]
