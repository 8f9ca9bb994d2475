"""What the runtime would do, and did: per op the winner, the runners-up and why each was skipped."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mistralrs_torch.ops import op_spec

if TYPE_CHECKING:
    from mistralrs_torch.runtime._runtime import Runtime


def explain(runtime: Runtime) -> dict[str, Any]:
    """A JSON-ready explanation: for each op, a representative call, the winner, runners-up and skips."""
    inactive = [f for f in runtime.resolution.features if f.status != "active" and f.manifest is not None]
    device = runtime.device.torch_device.split(":")[0]
    dtype = "float32" if device == "cpu" else "bfloat16"
    ops: dict[str, Any] = {}
    for op, dispatcher in runtime.dispatchers().items():
        spec = op_spec(op)
        call = spec.probe(device, dtype)
        winner, runners_up, skipped = None, [], []
        for backend in dispatcher.backends:
            support = backend.supports(call)
            if support.ok and winner is None:
                winner = backend.name
            elif support.ok:
                runners_up.append(backend.name)
            else:
                skipped.append({"backend": backend.name, "feature": backend.feature, "reason": support.reason})
        for feature in inactive:
            if feature.manifest is not None and spec.kind in feature.manifest.provides:
                skipped.append({"backend": None, "feature": feature.name,
                                "reason": f"feature {feature.status}: {feature.reasons[0] if feature.reasons else ''}"})
        ops[op] = {"kind": spec.kind, "call": call.describe(), "order": [b.name for b in dispatcher.backends],
                   "winner": winner, "runners_up": runners_up, "skipped": skipped,
                   "bindings": [b.describe() for b in dispatcher.bindings]}
    broken = [{"plugin": b.plugin.name, "distribution": b.plugin.distribution, "stage": b.stage, "error": b.error,
               "features": list(b.features), "fix": b.fix} for b in runtime.broken]
    tuner = runtime.tuner
    measured = None if tuner is None else {
        "seconds": tuner.seconds, "notes": list(tuner.cache.notes),
        "cache": str(tuner.cache.path) if tuner.cache.path else None,
        "choices": [{"op": m.op, "call": m.call.describe(), "winner": m.winner, "source": m.source,
                     "times": dict(m.times), "dropped": dict(m.dropped)} for m in tuner.measurements]}
    return {"device": runtime.device.torch_device, "device_feature": runtime.device.feature,
            "paged_attention": runtime.paged_attention_enabled, "selection": runtime.selection, "measured": measured,
            "collectives": [b.name for b in runtime.collective_backends],
            "broken": broken, "ops": ops, "fallbacks": [b.describe() for b in runtime.fallbacks]}


def explain_text(data: dict[str, Any]) -> str:
    """The explanation as indented text."""
    lines = [f"device: {data['device']} ({data['device_feature']}); paged attention "
             f"{'on' if data['paged_attention'] else 'off (opt-in: --paged-attn or MISTRALRS_PAGED_ATTN=1)'}",
             f"collectives: {' > '.join(data['collectives'])}"]
    for broken in data["broken"]:
        lines.append(f"BROKEN plugin {broken['plugin']} ({broken['distribution']}) at {broken['stage']}: "
                     f"{broken['error']}; its active features {', '.join(broken['features']) or '(none)'} run "
                     f"nothing here: {broken['fix']}")
    for op, info in data["ops"].items():
        lines.append(f"{op} ({info['call']}): {info['winner'] or 'NO BACKEND'}")
        if info["runners_up"]:
            lines.append(f"    runners-up: {', '.join(info['runners_up'])}")
        for skip in info["skipped"]:
            lines.append(f"    skipped {skip['backend'] or skip['feature']}: {skip['reason']}")
        lines += [f"    bound: {b}" for b in info["bindings"]]
    lines += [f"fallback: {f}" for f in data["fallbacks"]] or ["fallbacks: none recorded"]
    measured = data.get("measured")
    if measured is not None:
        lines.append(f"measured selection: {len(measured['choices'])} choice(s), {measured['seconds']:.2f} s tuning, "
                     f"cache {measured['cache'] or '(in memory only)'}")
        lines += [f"    note: {note}" for note in measured["notes"]]
        for choice in measured["choices"]:
            timed = ", ".join(f"{name} {seconds * 1e6:.1f} us" for name, seconds in
                              sorted(choice["times"].items(), key=lambda kv: kv[1]))
            dropped = "".join(f"; {name} dropped: {why}" for name, why in choice["dropped"].items())
            lines.append(f"    {choice['op']} [{choice['call']}] -> {choice['winner']} ({choice['source']}: "
                         f"{timed}{dropped})")
    return "\n".join(lines)
