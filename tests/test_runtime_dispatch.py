"""Runtime binding: backend choice by priority, recorded fallbacks, caching, errors, explain, paged opt-in.

Every runtime here is built from fake plugins written to tmp_path and handed to
PluginManager as entry points, then resolved and bound exactly as Runtime.create does.
"""

from __future__ import annotations

import importlib.metadata
import sys
import textwrap
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch

import mistralrs_torch
from mistralrs_torch._errors import FallbackError, OpInputError, UnsupportedCallError
from mistralrs_torch.generic import GenericAttention, dense_attention
from mistralrs_torch.ops import OPS
from mistralrs_torch.runtime import Binding, Runtime, explain_text

GROUP = "mistralrs.plugins"

_PLUGIN = '''
import torch
from mistralrs_torch import FeatureManifest, hookimpl
from mistralrs_torch.ops import Device, Support
from mistralrs_torch.generic import GenericAttention, GenericMatmul

MANIFEST = FeatureManifest(name={feature!r}, summary="a fake feature for runtime tests",
                           distribution="fake-dist", **{manifest!r})
SUPPORTS_CALLS = []
OP_CALLS = []


class FakeAttention:
    name = {backend!r}
    feature = {backend_feature!r}
    dispatch_priority = {priority!r}
    head_sizes = {head_sizes!r}
    offset = {offset!r}
    fail = {fail!r}

    def supports(self, call):
        SUPPORTS_CALLS.append(call)
        if call.device != "cpu":
            return Support(False, "fake backend runs on cpu only, not " + call.device)
        if self.head_sizes is not None and call.head_size not in self.head_sizes:
            return Support(False, "head size %d is not one of %s" % (call.head_size, self.head_sizes))
        return Support(True)

    def attention(self, q, k, v, *, causal=False, mask=None, scale=None):
        OP_CALLS.append("attention")
        if self.fail:
            raise RuntimeError("fake kernel crashed")
        return GenericAttention().attention(q, k, v, causal=causal, mask=mask, scale=scale) + self.offset

    def paged_attention(self, q, k_cache, v_cache, block_table, seq_lens, *, scale=None):
        OP_CALLS.append("paged_attention")
        if self.fail:
            raise RuntimeError("fake kernel crashed")
        return GenericAttention().paged_attention(q, k_cache, v_cache, block_table, seq_lens, scale=scale) + self.offset


class FakeMatmul:
    name = {backend!r} + "-matmul"
    feature = {backend_feature!r}
    dispatch_priority = {priority!r}

    def supports(self, call):
        SUPPORTS_CALLS.append(call)
        return Support(call.device == "cpu" and call.dtype == "float32", "fake matmul takes float32 on cpu only")

    def linear(self, x, weight, bias=None):
        OP_CALLS.append("linear")
        return GenericMatmul().linear(x, weight, bias) + {offset!r}

    def int8_linear(self, x, weight, scale, bias=None):
        OP_CALLS.append("int8_linear")
        if {fail!r}:
            raise RuntimeError("fake kernel crashed")
        return GenericMatmul().int8_linear(x, weight, scale, bias) + {offset!r}


@hookimpl
def mistralrs_features():
    return (MANIFEST,)
'''

_ATTENTION_HOOK = '''
@hookimpl
def mistralrs_attention_backends(active):
    {body}
'''

_MATMUL_HOOK = '''
@hookimpl
def mistralrs_matmul_backends(active):
    return [FakeMatmul()] if {backend_feature!r} in active else []
'''

_DEVICE_HOOK = '''
@hookimpl
def mistralrs_devices(active, system):
    return [Device("cpu", "fake cpu device", {feature!r})] if {feature!r} in active else []
'''


@pytest.fixture(autouse=True)
def _clean_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No mistralrs.toml or pyproject.toml selection from wherever pytest was started."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)


@pytest.fixture
def make_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., importlib.metadata.EntryPoint]:
    """make_plugin(feature=..., backend=..., priority=..., head_sizes=..., ...) -> an entry point to a fresh module."""
    folder = tmp_path / "runtime_fake_plugins"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    created: list[str] = []

    def make(feature: str = "fake-attn", *, ep_name: str | None = None, backend: str | None = None,
             priority: int = 100, head_sizes: tuple[int, ...] | None = None, offset: float = 0.0,
             fail: bool = False, backend_feature: str | None = None, manifest: Mapping[str, Any] | None = None,
             attention_body: str | None = None, matmul: bool = False, device: bool = False,
             source: str = "") -> importlib.metadata.EntryPoint:
        module = f"mrs_rt_fake_{feature.replace('-', '_')}_{uuid.uuid4().hex[:10]}"
        backend_feature = feature if backend_feature is None else backend_feature
        fields = dict(feature=feature, backend=backend or f"{feature}-backend", priority=priority,
                      head_sizes=head_sizes, offset=offset, fail=fail, backend_feature=backend_feature,
                      manifest=dict(manifest if manifest is not None else {"provides": ("attention",)}))
        text = _PLUGIN.format(**fields)
        body = attention_body or f"return [FakeAttention()] if {backend_feature!r} in active else []"
        if attention_body != "":
            text += _ATTENTION_HOOK.format(body=body)
        if matmul:
            text += _MATMUL_HOOK.format(**fields)
        if device:
            text += _DEVICE_HOOK.format(**fields)
        text += textwrap.dedent(source)
        (folder / f"{module}.py").write_text(text, encoding="utf-8")
        created.append(module)
        return importlib.metadata.EntryPoint(name=ep_name or feature.replace("-", "_"), value=module, group=GROUP)

    yield make
    for module in created:
        sys.modules.pop(module, None)


def module_of(entry_point: importlib.metadata.EntryPoint) -> Any:
    return sys.modules[entry_point.value]


def build(entry_points: list[importlib.metadata.EntryPoint], environ: Mapping[str, str] | None = None,
          **kwargs: Any) -> tuple[mistralrs_torch.PluginManager, mistralrs_torch.Resolution, Runtime]:
    environ = dict(environ or {})
    pm = mistralrs_torch.PluginManager(entry_points=entry_points, environ=environ)
    resolution = mistralrs_torch.resolve(pm.features, pm.broken, mistralrs_torch.read_selection(None, environ),
                                   pm.probe_system(), environ)
    return pm, resolution, Runtime(resolution, pm, environ=environ, **kwargs)


def qkv(head_size: int = 64, q_len: int = 3, k_len: int = 5, hq: int = 4, hkv: int = 2,
        dtype: torch.dtype = torch.float32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(2, hq, q_len, head_size, generator=gen).to(dtype),
            torch.randn(2, hkv, k_len, head_size, generator=gen).to(dtype),
            torch.randn(2, hkv, k_len, head_size, generator=gen).to(dtype))


def paged_inputs(head_size: int = 64, block_size: int = 4) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(3)
    k_cache = torch.randn(8, block_size, 2, head_size, generator=gen)
    v_cache = torch.randn(8, block_size, 2, head_size, generator=gen)
    table = torch.tensor([[5, 1, 6], [2, 7, 0]], dtype=torch.int32)
    lens = torch.tensor([3, 2 * block_size + 1], dtype=torch.int32)
    q = torch.randn(2, 4, 1, head_size, generator=gen)
    return q, k_cache, v_cache, table, lens


# ---------------------------------------------------------------------------------------------
# choice and fallback
# ---------------------------------------------------------------------------------------------

def test_highest_priority_supporting_backend_wins(make_plugin) -> None:
    low = make_plugin("fake-low", priority=50, offset=2.0)
    high = make_plugin("fake-high", priority=100, offset=1.0)
    _pm, resolution, runtime = build([low, high])
    assert {"fake-low", "fake-high"} <= set(resolution.active)
    assert [b.name for b in runtime.attention_backends] == ["fake-high-backend", "fake-low-backend",
                                                           "cpu-native-attention", "cpu-attention"]
    q, k, v = qkv()
    out = runtime.attention(q, k, v, causal=True)
    torch.testing.assert_close(out, dense_attention(q, k, v, causal=True) + 1.0)
    assert module_of(high).OP_CALLS == ["attention"] and module_of(low).OP_CALLS == []
    (binding,) = runtime.bindings
    assert binding.chosen == "fake-high-backend" and not binding.is_fallback
    assert runtime.fallbacks == ()


def test_backend_priority_not_registration_order_decides(make_plugin) -> None:
    high = make_plugin("fake-high", priority=100, offset=1.0)
    low = make_plugin("fake-low", priority=50, offset=2.0)
    _, _, runtime = build([high, low])  # the other discovery order
    q, k, v = qkv()
    torch.testing.assert_close(runtime.attention(q, k, v), dense_attention(q, k, v) + 1.0)


def test_refusing_backend_falls_through_to_generic_and_the_fallback_is_recorded(make_plugin) -> None:
    ep = make_plugin("fake-attn", head_sizes=(64,), offset=1.0)
    _, _, runtime = build([ep])
    q, k, v = qkv(head_size=32)
    out = runtime.attention(q, k, v, causal=True)
    torch.testing.assert_close(out, dense_attention(q, k, v, causal=True))  # the generic result, no offset
    (fallback,) = runtime.fallbacks
    assert isinstance(fallback, Binding)
    assert fallback.op == "attention" and fallback.chosen == "cpu-attention" and fallback.is_fallback
    (skipped,) = fallback.skipped
    assert skipped[0] == "fake-attn-backend" and skipped[1] == "fake-attn"
    assert "head size 32" in skipped[2]
    assert fallback.call.head_size == 32 and fallback.call.dtype == "float32" and fallback.call.mask == "causal"
    described = fallback.describe()
    assert "fake-attn-backend" in described and "head size 32" in described and "cpu-attention" in described
    # The supported head size goes to the fake backend and is not a fallback.
    q64, k64, v64 = qkv(head_size=64)
    expected = dense_attention(q64, k64, v64, causal=True) + 1
    torch.testing.assert_close(runtime.attention(q64, k64, v64, causal=True), expected)
    assert len(runtime.bindings) == 2 and len(runtime.fallbacks) == 1
    # ... and explain() shows the recorded fallback.
    assert any("head size 32" in f for f in runtime.explain()["fallbacks"])


def test_choice_is_cached_per_call_signature(make_plugin) -> None:
    ep = make_plugin("fake-attn", head_sizes=(64,))
    _, _, runtime = build([ep])
    calls = module_of(ep).SUPPORTS_CALLS
    q, k, v = qkv(head_size=64)
    for _ in range(5):
        runtime.attention(q, k, v, causal=True)
    assert len(calls) == 1
    # Other sequence lengths and batch sizes are the same signature.
    q2, k2, v2 = qkv(head_size=64, q_len=1, k_len=9)
    runtime.attention(q2[:1], k2[:1], v2[:1], causal=True)
    assert len(calls) == 1
    # Each new signature is judged once: mask kind, dtype, head size, causal flag, GQA.
    signatures = [
        dict(causal=False),
        dict(causal=True, mask=torch.ones(5, dtype=torch.bool)),
        dict(causal=True, mask=torch.zeros(5)),
    ]
    for kwargs in signatures:
        for _ in range(3):
            runtime.attention(q, k, v, **kwargs)
    assert len(calls) == 4
    assert [c.mask for c in calls[1:]] == ["none", "causal+bool", "causal+float"]
    for _ in range(3):
        runtime.attention(*qkv(head_size=32), causal=True)
    assert len(calls) == 5 and calls[-1].head_size == 32
    for _ in range(3):
        runtime.attention(*qkv(dtype=torch.bfloat16), causal=True)
    assert len(calls) == 6 and calls[-1].dtype == "bfloat16"
    for _ in range(3):
        runtime.attention(*qkv(hq=2, hkv=2), causal=True)
    assert len(calls) == 7 and calls[-1].gqa is False and calls[0].gqa is True
    assert len(runtime.bindings) == 7


def test_matmul_choice_is_cached_and_falls_back_by_dtype(make_plugin) -> None:
    ep = make_plugin("fake-mm", matmul=True, attention_body="", manifest={"provides": ("matmul",)}, offset=1.0)
    _, _, runtime = build([ep])
    calls = module_of(ep).SUPPORTS_CALLS
    x, w = torch.randn(3, 8), torch.randn(4, 8)
    for _ in range(4):
        torch.testing.assert_close(runtime.linear(x, w), x @ w.T + 1.0)
    assert len(calls) == 1
    out = runtime.linear(x.bfloat16(), w.bfloat16())
    torch.testing.assert_close(out, (x.bfloat16() @ w.bfloat16().T))
    (fallback,) = runtime.fallbacks
    assert fallback.op == "linear" and fallback.chosen == "cpu-matmul"
    assert fallback.skipped[0][0] == "fake-mm-backend-matmul" and "float32" in fallback.skipped[0][2]


def test_no_fallback_turns_a_fallback_into_an_error_naming_backend_and_reason(make_plugin) -> None:
    ep = make_plugin("fake-attn", head_sizes=(64,))
    _, _, runtime = build([ep], {"MISTRALRS_NO_FALLBACK": "1"})
    # A call the preferred backend takes is fine.
    runtime.attention(*qkv(head_size=64))
    with pytest.raises(FallbackError) as caught:
        runtime.attention(*qkv(head_size=128))
    message = str(caught.value)
    assert "fake-attn-backend" in message and "head size 128" in message and "MISTRALRS_NO_FALLBACK" in message
    assert isinstance(caught.value, mistralrs_torch.MistralrsError)
    assert runtime.fallbacks == ()  # nothing was bound
    with pytest.raises(FallbackError):  # and it is not cached as a success either
        runtime.attention(*qkv(head_size=128))


def test_no_fallback_off_values_allow_the_fallback(make_plugin) -> None:
    ep = make_plugin("fake-attn", head_sizes=(64,))
    _, _, runtime = build([ep], {"MISTRALRS_NO_FALLBACK": "0"})
    runtime.attention(*qkv(head_size=128))
    assert len(runtime.fallbacks) == 1


def test_no_fallback_with_a_malformed_value_is_a_config_error(make_plugin) -> None:
    with pytest.raises(mistralrs_torch.ConfigError, match="MISTRALRS_NO_FALLBACK"):
        build([make_plugin("fake-attn")], {"MISTRALRS_NO_FALLBACK": "maybe"})


def test_no_backend_supporting_a_call_raises_with_every_reason(make_plugin) -> None:
    ep = make_plugin("fake-attn", head_sizes=(64,))
    _, _, runtime = build([ep])
    q, k, v = (t.to("meta") for t in qkv(head_size=64))
    with pytest.raises(UnsupportedCallError) as caught:
        runtime.attention(q, k, v)
    assert type(caught.value) is UnsupportedCallError
    message = str(caught.value)
    # each backend with its own reason
    fake_part, generic_part = message.split("fake-attn-backend", 1)[1], message.split("cpu-attention", 1)[1]
    assert "fake backend runs on cpu only, not meta" in fake_part
    assert "meta" in generic_part and "fake backend" not in generic_part
    with pytest.raises(OpInputError, match="x has dtype int32; expected one of float32"):
        runtime.linear(torch.ones(2, 2, dtype=torch.int32), torch.ones(2, 2, dtype=torch.int32))
    assert runtime.bindings == ()


def test_kernel_for_specialises_once_per_signature(make_plugin) -> None:
    """A backend's kernel_for(call) is asked once per bound signature; None means the op method."""
    ep = make_plugin("fake-attn", source="""
        KERNEL_FOR_CALLS = []

        def _kernel_for(self, call):
            KERNEL_FOR_CALLS.append(call)
            if call.op == "attention" and call.head_size == 64:
                return lambda q, k, v, *, causal=False, mask=None, scale=None: (
                    GenericAttention().attention(q, k, v, causal=causal, mask=mask, scale=scale) + 10.0)
            return None

        FakeAttention.kernel_for = _kernel_for
        """)
    _, _, runtime = build([ep])
    module = module_of(ep)
    for _ in range(3):
        q, k, v = qkv(head_size=64)
        torch.testing.assert_close(runtime.attention(q, k, v), dense_attention(q, k, v) + 10.0)
        q, k, v = qkv(head_size=32)
        torch.testing.assert_close(runtime.attention(q, k, v), dense_attention(q, k, v))
    assert [c.head_size for c in module.KERNEL_FOR_CALLS] == [64, 32]
    assert module.OP_CALLS == ["attention"] * 3  # the head-size-32 calls went through the method


# ---------------------------------------------------------------------------------------------
# misbehaving plugins are quarantined at bind time
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("backend_feature", "environ"), [
    ("cpu", {}),  # another plugin's feature
    ("ghost", {}),  # a feature nobody declared
    ("fake-attn", {"MISTRALRS_FEATURES": "none"}),  # its own feature, but not active
])
def test_backend_for_a_feature_that_is_not_its_own_active_one_is_quarantined(
    make_plugin, backend_feature, environ
) -> None:
    # The hook ignores ``active`` and returns its backend whatever is active.
    ep = make_plugin("fake-attn", backend_feature=backend_feature, attention_body="return [FakeAttention()]",
                     offset=1.0)
    pm, _, runtime = build([ep], environ)
    (broken,) = pm.broken
    assert broken.plugin.name == "fake_attn" and broken.stage == "hook mistralrs_attention_backends"
    assert repr(backend_feature) in broken.error
    assert [b.name for b in runtime.attention_backends] == ["cpu-native-attention", "cpu-attention"]
    q, k, v = qkv()
    torch.testing.assert_close(runtime.attention(q, k, v), dense_attention(q, k, v))


@pytest.mark.parametrize("body", ['raise RuntimeError("boom in hook")', 'return ["not a backend"]', "return 42"])
def test_hook_that_raises_or_returns_junk_is_quarantined_and_runtime_works(make_plugin, body) -> None:
    bad = make_plugin("fake-bad", attention_body=body)
    good = make_plugin("fake-good", priority=10, offset=3.0)
    pm, _, runtime = build([bad, good])
    assert [b.plugin.name for b in pm.broken] == ["fake_bad"]
    assert [b.name for b in runtime.attention_backends] == ["fake-good-backend", "cpu-native-attention",
                                                           "cpu-attention"]
    q, k, v = qkv()
    torch.testing.assert_close(runtime.attention(q, k, v), dense_attention(q, k, v) + 3.0)


def test_hot_path_calls_no_hook(make_plugin, monkeypatch: pytest.MonkeyPatch) -> None:
    ep = make_plugin("fake-attn", head_sizes=(64,), matmul=True, manifest={"provides": ("attention", "matmul")})
    pm, _, runtime = build([ep], paged_attention=True)
    hook_calls: list[str] = []
    for hook in pm._pm.hook.__dict__:
        if hook.startswith("mistralrs_"):
            for impl in pm._impls(hook):
                monkeypatch.setattr(impl, "function", lambda *a, _name=hook, _f=impl.function, **k: (
                    hook_calls.append(_name), _f(*a, **k))[1])
    monkeypatch.setattr(pm, "collect", lambda *a, **k: hook_calls.append("collect"))
    outputs = []
    for _ in range(3):
        outputs += [runtime.attention(*qkv(head_size=64), causal=True), runtime.attention(*qkv(head_size=32),
                                                                                          causal=True),
                    runtime.paged_attention(*paged_inputs()), runtime.linear(torch.randn(2, 4), torch.randn(3, 4)),
                    runtime.int8_linear(torch.randn(2, 4), torch.ones(3, 4, dtype=torch.int8), torch.ones(3))]
    assert hook_calls == []
    assert len(outputs) == 15 and all(torch.isfinite(o).all() for o in outputs)
    # One choice per signature, made on its first call: five signatures, five bindings.
    assert len(runtime.bindings) == 5
    pm.call_each("mistralrs_features", lambda result: True)  # the instrumentation does see hook calls
    assert "mistralrs_features" in hook_calls


# ---------------------------------------------------------------------------------------------
# explain
# ---------------------------------------------------------------------------------------------

def test_explain_lists_winner_runners_up_and_skipped_reasons(make_plugin) -> None:
    picky = make_plugin("fake-picky", head_sizes=(64,), priority=200)  # refuses explain's head size 128
    broad = make_plugin("fake-broad", priority=100)
    elsewhere = make_plugin("fake-mac", manifest={"provides": ("attention",), "platforms": ("macos",)})
    _pm, resolution, runtime = build([picky, broad, elsewhere])
    assert resolution.status("fake-mac").status == "unavailable"
    data = runtime.explain()
    attention = data["ops"]["attention"]
    assert attention["order"] == ["fake-picky-backend", "fake-broad-backend", "cpu-attention"]
    assert attention["winner"] == "fake-broad-backend"
    assert attention["runners_up"] == ["cpu-attention"]
    by_name = {s["backend"] or s["feature"]: s for s in attention["skipped"]}
    assert "head size 128" in by_name["fake-picky-backend"]["reason"]
    assert by_name["fake-picky-backend"]["feature"] == "fake-picky"
    assert "unavailable" in by_name["fake-mac"]["reason"] and "macOS" in by_name["fake-mac"]["reason"]
    assert data["ops"]["linear"]["winner"] == "cpu-matmul"
    assert data["device"] == "cpu" and data["paged_attention"] is False
    assert data["collectives"] == ["cpu-single-process"]
    assert list(data["ops"]) == [op.name for op in OPS]
    text = explain_text(data)
    assert "attention (float32 on cpu, head size 128, mask causal): fake-broad-backend" in text
    assert "runners-up: cpu-attention" in text
    assert "skipped fake-picky-backend: head size 128" in text
    assert "skipped fake-mac:" in text
    assert "fallbacks: none recorded" in text
    # explain() judges a representative call; it must not bind anything by itself.
    assert runtime.bindings == ()


# ---------------------------------------------------------------------------------------------
# paged attention: opt-in on cpu, default where the device feature says so
# ---------------------------------------------------------------------------------------------

def test_paged_attention_is_opt_in_on_cpu(make_plugin) -> None:
    _, _, runtime = build([])
    assert runtime.device.feature == "cpu" and runtime.paged_attention_enabled is False
    with pytest.raises(UnsupportedCallError) as caught:
        runtime.paged_attention(*paged_inputs())
    assert "MISTRALRS_PAGED_ATTN" in str(caught.value) and "--paged-attn" in str(caught.value)


@pytest.mark.parametrize(("environ", "kwargs"), [
    ({}, {"paged_attention": True}),
    ({"MISTRALRS_PAGED_ATTN": "1"}, {}),
    ({"MISTRALRS_PAGED_ATTN": "true"}, {}),
])
def test_paged_attention_opt_in_on_cpu_works(environ, kwargs) -> None:
    _, _, runtime = build([], environ, **kwargs)
    assert runtime.paged_attention_enabled
    q, k_cache, v_cache, table, lens = paged_inputs()
    out = runtime.paged_attention(q, k_cache, v_cache, table, lens)
    torch.testing.assert_close(out, GenericAttention().paged_attention(q, k_cache, v_cache, table, lens))
    assert runtime.bindings[-1].chosen == "cpu-native-attention" and runtime.bindings[-1].op == "paged_attention"
    assert runtime.bindings[-1].call.block_size == 4


def test_explicit_paged_attention_argument_beats_the_variable() -> None:
    _, _, runtime = build([], {"MISTRALRS_PAGED_ATTN": "1"}, paged_attention=False)
    assert runtime.paged_attention_enabled is False


def test_paged_attention_on_by_default_for_a_device_feature_that_says_so(make_plugin) -> None:
    ep = make_plugin("fake-dev", device=True, priority=10,
                     manifest={"provides": ("device", "attention"), "paged_attention": "default",
                               "selection_priority": 10})
    pm, resolution, runtime = build([ep])
    assert "fake-dev" in resolution.active and pm.broken == ()
    assert runtime.device.feature == "fake-dev" and runtime.device.name == "fake cpu device"
    assert [d.feature for d in runtime.devices] == ["fake-dev", "cpu"]
    assert runtime.paged_attention_enabled is True
    assert runtime.explain()["paged_attention"] is True
    q, k_cache, v_cache, table, lens = paged_inputs()
    out = runtime.paged_attention(q, k_cache, v_cache, table, lens)
    torch.testing.assert_close(out, GenericAttention().paged_attention(q, k_cache, v_cache, table, lens))
    assert module_of(ep).OP_CALLS == ["paged_attention"]
    # The user can still turn it off.
    _, _, off = build([ep], {"MISTRALRS_PAGED_ATTN": "0"})
    assert off.paged_attention_enabled is False
    with pytest.raises(UnsupportedCallError):
        off.paged_attention(q, k_cache, v_cache, table, lens)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, "fake:0"),
        ({"LOCAL_RANK": "2", "RANK": "6", "WORLD_SIZE": "8"}, "fake:2"),  # rank 6 is the third process on its machine
        ({"LOCAL_RANK": "5"}, "fake:1"),  # more ranks than devices share them round-robin, as torch's rank % count
    ],
)
def test_a_launched_rank_defaults_to_its_local_rank_device(make_plugin, environ, expected) -> None:
    ep = make_plugin(
        "fake-gpus",
        attention_body="",
        manifest={"provides": ("device",), "selection_priority": 10},
        source="""
        @hookimpl
        def mistralrs_devices(active, system):
            if "fake-gpus" not in active:
                return []
            return [Device("fake:%d" % i, "fake gpu %d" % i, "fake-gpus") for i in range(4)]
        """,
    )
    pm, resolution, runtime = build([ep], environ)
    assert pm.broken == () and "fake-gpus" in resolution.active
    assert runtime.device.torch_device == expected
    assert [d.torch_device for d in runtime.devices] == ["fake:0", "fake:1", "fake:2", "fake:3", "cpu"]


@pytest.mark.parametrize("value", ["x", "\u00b2", "-1"])
def test_a_malformed_local_rank_is_a_config_error_not_device_0(value: str) -> None:
    # One strict reader of LOCAL_RANK everywhere: the runtime no longer falls back to the first device in silence.
    with pytest.raises(mistralrs_torch.ConfigError, match="LOCAL_RANK="):
        Runtime.create(environ={"LOCAL_RANK": value, "MISTRALRS_PLUGIN_AUTOLOAD": "0"})


def test_paged_attention_cache_key_includes_block_size(make_plugin) -> None:
    ep = make_plugin("fake-attn")
    _, _, runtime = build([ep], paged_attention=True)
    calls = module_of(ep).SUPPORTS_CALLS
    for _ in range(3):
        runtime.paged_attention(*paged_inputs(block_size=4))
    runtime.paged_attention(*paged_inputs(block_size=16))
    assert [c.block_size for c in calls] == [4, 16]
    assert all(c.op == "paged_attention" and c.mask == "causal" for c in calls)


# ---------------------------------------------------------------------------------------------
# end to end with the installed plugins
# ---------------------------------------------------------------------------------------------


def test_runtime_create_on_this_machine_end_to_end() -> None:
    runtime = Runtime.create(environ={})
    assert runtime.device.torch_device == "cpu" or torch.cuda.is_available()
    device = runtime.device.torch_device
    q, k, v = (runtime.to_device(t) for t in qkv())
    expected = dense_attention(*qkv(), causal=True)
    torch.testing.assert_close(runtime.attention(q, k, v, causal=True).cpu(), expected, rtol=1e-4, atol=1e-4)
    x, w, b = (runtime.to_device(t) for t in (torch.randn(3, 8), torch.randn(5, 8), torch.randn(5)))
    torch.testing.assert_close(runtime.linear(x, w, b).cpu(), x.cpu() @ w.cpu().T + b.cpu(), rtol=1e-4, atol=1e-4)
    wq = runtime.to_device(torch.randint(-127, 128, (5, 8), dtype=torch.int8))
    scale = runtime.to_device(torch.rand(5))
    torch.testing.assert_close(
        runtime.int8_linear(x, wq, scale).cpu(),
        x.cpu() @ (wq.cpu().float() * scale.cpu()[:, None]).T,
        rtol=1e-4,
        atol=1e-4,
    )
    comm = runtime.communicator()
    assert comm is runtime.communicator() and (comm.rank, comm.world_size) == (0, 1)
    data = runtime.explain()
    assert all(info["winner"] for info in data["ops"].values()) and data["device"] == device
    assert runtime.fallbacks == ()
