"""The text side of a model: a ``tokenizers.Tokenizer``, its special tokens and chat template, and streaming decode.

From a Hugging Face folder the tokenizer is tokenizer.json as saved; from a
GGUF file it is rebuilt from the embedded vocabulary and merges the way
transformers' GGUF conversion (and llama.cpp) read them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from mistralrs_torch._errors import ModelLoadError
from mistralrs_torch.models._chat import render_chat
from mistralrs_torch.models._config import read_json


@dataclass(frozen=True)
class TextTokenizer:
    """Encodes text and chat messages, decodes ids; ``stop_ids`` end generation (eos and friends)."""

    backend: Tokenizer
    special_tokens: Mapping[str, str] = field(default_factory=dict)
    chat_template: str | None = None
    stop_ids: frozenset[int] = frozenset()

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; with add_special_tokens, what the tokenizer adds itself (a BOS, if any)."""
        return list(self.backend.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.backend.decode(list(ids), skip_special_tokens=True))

    def render_chat(self, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = True) -> str:
        """The chat template rendered as transformers' ``apply_chat_template(..., tokenize=False)`` does."""
        if self.chat_template is None:
            raise ModelLoadError("this model has no chat template (tokenizer_config.json 'chat_template' or GGUF "
                                 "'tokenizer.chat_template'): send the prompt as is (--raw)")
        return render_chat(self.chat_template, messages, add_generation_prompt=add_generation_prompt,
                           special_tokens=self.special_tokens)

    def encode_chat(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        """Ids of the rendered chat; the template writes any BOS itself, so none is added (as transformers does)."""
        return self.encode(self.render_chat(messages), add_special_tokens=False)


class TextStream:
    """Incremental detokenisation: text appears only once its bytes form whole UTF-8 characters.

    Each step decodes a short window of recent ids twice (with and without the
    newest) and emits the difference, so a character split over several byte
    tokens is printed once complete, and decoders that strip a leading space
    at the start of a text do not eat the spaces between tokens.
    """

    def __init__(self, tokenizer: TextTokenizer) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def push(self, token: int) -> str:
        """The new text that ``token`` completes ('' while a character is still partial)."""
        self._ids.append(token)
        before = self._tokenizer.decode(self._ids[self._prefix:self._read])
        after = self._tokenizer.decode(self._ids[self._prefix:])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            return after[len(before):]
        return ""


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if isinstance(value, Mapping):
        value = value.get("content")
    return value if isinstance(value, str) else None


def tokenizer_from_hf(folder: Path, stop_ids: Iterable[int]) -> TextTokenizer:
    """tokenizer.json, tokenizer_config.json (special tokens, chat template) and chat_template.jinja if saved."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing: this runner reads fast tokenizers only; save one with "
                             "transformers (AutoTokenizer.from_pretrained(...).save_pretrained(DIR)) or use the "
                             "model's GGUF file")
    try:
        backend = Tokenizer.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 - the Rust library raises plain Exception subclasses
        raise ModelLoadError(f"{path} is not a valid tokenizer.json ({exc}): get the file again") from None
    config_path = folder / "tokenizer_config.json"
    config = read_json(config_path) if config_path.is_file() else {}
    template = config.get("chat_template")
    if isinstance(template, list):  # several named templates: transformers uses the one named "default"
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():  # newer transformers save the template beside the config, where it takes precedence
        template = jinja.read_text(encoding="utf-8")
    special = {name: text for name in ("bos_token", "eos_token", "unk_token", "pad_token")
               if (text := _token_text(config.get(name))) is not None}
    eos = special.get("eos_token")
    eos_id = backend.token_to_id(eos) if eos else None
    stops = frozenset(stop_ids) | ({eos_id} if eos_id is not None else set())
    return TextTokenizer(backend, special, template if isinstance(template, str) else None, stops)


# How llama.cpp splits text before BPE, per tokenizer.ggml.pre (transformers' GGUF conversion has the same table).
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_SPLITS = {"llama-bpe": _LLAMA3_SPLIT, "llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT, "smaug-bpe": _LLAMA3_SPLIT,
           "qwen2": _QWEN2_SPLIT, "deepseek-r1-qwen": _QWEN2_SPLIT}
_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable spelling of each byte, in which byte-level vocabularies are written."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    spelling = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in spelling:
            spelling[b] = chr(256 + extra)
            extra += 1
    return spelling


def _pre_tokenizer(pre: str) -> pre_tokenizers.PreTokenizer:
    if pre in _SPLITS:
        return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(_SPLITS[pre]), behavior="isolated"),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if pre == "smollm":  # SmolLM's own tokenizer.json: each digit alone, then GPT-2's split
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    return byte_level


def _merges_from_scores(tokens: Sequence[str], scores: Sequence[float]) -> list[tuple[str, str]]:
    """BPE merges a SentencePiece vocabulary implies: every split of a token into two tokens, best score first.

    The same order as transformers' generate_merges: within a token by the pieces' ids, then by score, then by
    the pieces' lengths (a stable sort, so ties keep vocabulary order).
    """
    vocab = {t: i for i, t in enumerate(tokens)}
    merges: list[tuple[str, str, float]] = []
    for token, score in zip(tokens, scores, strict=False):
        pairs = [(token[:i], token[i:], score) for i in range(1, len(token))
                 if token[:i] in vocab and token[i:] in vocab]
        merges.extend(sorted(pairs, key=lambda pair: (vocab[pair[0]], vocab[pair[1]])))
    merges.sort(key=lambda pair: (pair[2], len(pair[0]), len(pair[1])), reverse=True)
    return [(left, right) for left, right, _ in merges]


def _byte_level(tokens: Sequence[str], merges: Sequence[str], pre: str) -> Tokenizer:
    """GPT-2-style byte-level BPE (tokenizer.ggml.model "gpt2")."""
    spelling = _bytes_to_unicode()
    alphabet = set(spelling.values())
    # A token outside the byte alphabet (a mislabelled control token) is respelled byte by byte, as transformers does.
    vocab = {t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8")): i
             for i, t in enumerate(tokens)}
    pairs = [(a, b) for a, b in (m.split(" ", 1) for m in merges)]
    backend = Tokenizer(models.BPE(vocab=vocab, merges=pairs, dropout=None,
                                   continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False))
    backend.pre_tokenizer = _pre_tokenizer(pre)
    backend.decoder = decoders.ByteLevel()
    return backend


def _sentencepiece(tokens: Sequence[str], merges: Sequence[tuple[str, str]]) -> Tokenizer:
    """SentencePiece BPE with byte fallback (tokenizer.ggml.model "llama"), built as transformers' LlamaTokenizer."""
    backend = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=list(merges), fuse_unk=True,
                                   byte_fallback=True, dropout=None))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
    backend.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(content=" ", left=1)])
    return backend


def tokenizer_from_gguf(metadata: Mapping[str, Any], source: str) -> TextTokenizer:
    """The tokenizer embedded in GGUF metadata: byte-level BPE ("gpt2") or SentencePiece BPE ("llama")."""
    kind = metadata.get("tokenizer.ggml.model")
    # GGUF metadata values are untyped: the checks below stand for their types.
    tokens: Any = metadata.get("tokenizer.ggml.tokens")
    merges: Any = metadata.get("tokenizer.ggml.merges")
    scores: Any = metadata.get("tokenizer.ggml.scores")
    if kind not in ("gpt2", "llama"):
        raise ModelLoadError(f"{source}: tokenizer.ggml.model {kind!r} is not supported (supported: gpt2, byte-level "
                             "BPE; llama, SentencePiece BPE): use the model's Hugging Face folder, whose "
                             "tokenizer.json this runner reads")
    missing = "tokenizer.ggml.tokens" if not tokens else "tokenizer.ggml.merges" if kind == "gpt2" and not merges \
        else "tokenizer.ggml.scores" if kind == "llama" and not merges and not scores else None
    if missing:
        raise ModelLoadError(f"{source} has no {missing}: the file carries no usable tokenizer; get a complete "
                             "GGUF file")
    if kind == "gpt2":
        backend = _byte_level(tokens, merges, str(metadata.get("tokenizer.ggml.pre", "default")))
    else:
        backend = _sentencepiece(tokens, [tuple(m.split(" ", 1)) for m in merges] if merges
                                 else _merges_from_scores(tokens, scores))
    types = metadata.get("tokenizer.ggml.token_type") or ()
    alphabet = set(_bytes_to_unicode().values())
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True)
                                for t, kind_ in zip(tokens, types, strict=False)
                                if kind_ == _CONTROL and (kind != "gpt2" or set(t) <= alphabet)])
    backend.add_tokens([AddedToken(t, normalized=False, special=False)
                        for t, kind_ in zip(tokens, types, strict=False) if kind_ == _USER_DEFINED])

    def special(key: str) -> str | None:
        index = metadata.get(f"tokenizer.ggml.{key}")
        return tokens[index] if isinstance(index, int) and 0 <= index < len(tokens) else None

    names = {"bos_token": "bos_token_id", "eos_token": "eos_token_id", "unk_token": "unknown_token_id",
             "pad_token": "padding_token_id"}
    special_tokens = {name: text for name, key in names.items() if (text := special(key)) is not None}
    bos = special_tokens.get("bos_token")
    # A SentencePiece file that does not say otherwise gets a BOS, as llama.cpp and transformers give it.
    if metadata.get("tokenizer.ggml.add_bos_token", kind == "llama") and bos is not None:
        bos_id = int(metadata["tokenizer.ggml.bos_token_id"])
        backend.post_processor = processors.TemplateProcessing(single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 $B:1",
                                                               special_tokens=[(bos, bos_id)])
    stops = {metadata[k] for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id")
             if isinstance(metadata.get(k), int)}
    template = metadata.get("tokenizer.chat_template")
    return TextTokenizer(backend, special_tokens, template if isinstance(template, str) else None, frozenset(stops))
