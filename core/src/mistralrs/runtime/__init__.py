"""The runtime: ops bound to backends, with explain and no silent fallback."""

from mistralrs.runtime._dispatch import Binding, Dispatcher, kernel
from mistralrs.runtime._explain import explain_text
from mistralrs.runtime._loading import TensorSlice, load_safetensors
from mistralrs.runtime._runtime import Runtime

__all__ = ["Binding", "Dispatcher", "Runtime", "TensorSlice", "explain_text", "kernel", "load_safetensors"]
