"""Chat templates rendered with jinja2 the way transformers' ``apply_chat_template`` renders them.

Same sandboxed environment and options (trim_blocks, lstrip_blocks, loop
controls), the same helpers templates call (raise_exception, strftime_now,
a tojson that does not escape HTML), and the same variables (messages,
add_generation_prompt and the special tokens), so the rendered prompt, and
so the token ids, equal transformers'.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from mistralrs_torch._errors import ModelLoadError


class _Generation(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}`` (transformers tracks assistant spans with it): renders its body."""

    tags = {"generation"}  # noqa: RUF012 - jinja2 declares tags as a plain class attribute to override

    def parse(self, parser: Any) -> Any:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return str(caller())


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@lru_cache(maxsize=8)
def _compile(template: str) -> jinja2.Template:
    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=[_Generation, jinja2.ext.loopcontrols])
    environment.filters["tojson"] = _tojson
    environment.globals["raise_exception"] = _raise_exception
    environment.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return environment.from_string(template)


def render_chat(template: str, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool,
                special_tokens: Mapping[str, str]) -> str:
    """The prompt text for ``messages`` ({"role": ..., "content": ...} each)."""
    try:
        return _compile(template).render(messages=[dict(m) for m in messages], tools=None, documents=None,
                                         add_generation_prompt=add_generation_prompt, **special_tokens)
    except jinja2.exceptions.TemplateError as exc:
        raise ModelLoadError(f"the model's chat template failed: {exc}: send the prompt as is (--raw), or fix "
                             "chat_template in tokenizer_config.json") from None
