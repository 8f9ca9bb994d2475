"""Discovery and the plugin manager: the only place that calls plugin hooks.

Entry points load one at a time; each hook implementation is called on its
own. A plugin that fails to import, registers an unknown hook, declares a bad
manifest, targets an unsupported API version or raises in a hook is
quarantined (unregistered and reported with the error and how to disable it)
and every other plugin keeps working.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

import pluggy

from mistralrs_torch import _hookspecs
from mistralrs_torch._distributions import PluginEntryPoint, plugin_entry_points
from mistralrs_torch._errors import MistralrsError, PluginError
from mistralrs_torch._version import PLUGIN_API_VERSION, __version__, supports_api_version
from mistralrs_torch.features import BrokenPlugin, FeatureManifest, InstalledFeature, PluginInfo
from mistralrs_torch.plugins import _builtin
from mistralrs_torch.system import SystemSnapshot, probe_system
from mistralrs_torch.validation import env_flag, env_list

ENTRY_POINT_GROUP = "mistralrs.plugins"
#: PluginEntryPoint from discovery, or an importlib.metadata.EntryPoint (tests pass fake ones).
EntryPointLike = Any
_HOOK_NAMES = tuple(name for name in vars(_hookspecs) if name.startswith("mistralrs_"))


class PluginManager:
    """Discovers plugins and calls their hooks, each plugin on its own.

    ``entry_points`` replaces discovery (tests pass fake ones); ``environ``
    supplies MISTRALRS_DISABLE_PLUGINS, MISTRALRS_PLUGIN_AUTOLOAD and
    MISTRALRS_STRICT_PLUGINS. Broken plugins are listed in :attr:`broken`; strict
    mode (``strict`` overrides the variable) then raises PluginError naming every
    one of them, at the end of discovery or of the hook call that broke them.
    """

    def __init__(self, entry_points: Iterable[EntryPointLike] | None = None,
                 environ: Mapping[str, str] = os.environ, *, strict: bool | None = None) -> None:
        self._environ = environ
        self._strict = env_flag(environ, "MISTRALRS_STRICT_PLUGINS") if strict is None else strict
        self._pm = pluggy.PluginManager(_hookspecs.PROJECT)
        self._pm.add_hookspecs(_hookspecs)
        self._info: dict[str, PluginInfo] = {}
        self._features: dict[str, InstalledFeature] = {}
        self._broken: list[BrokenPlugin] = []
        self._disabled: list[PluginInfo] = []
        self._system: SystemSnapshot | None = None
        builtin = PluginInfo(_builtin.PLUGIN_NAME, "mistralrs-torch", __version__, _builtin.__name__)
        self._add(builtin, lambda: _builtin)
        if env_flag(environ, "MISTRALRS_PLUGIN_AUTOLOAD", default=True):
            disabled = set(env_list(environ, "MISTRALRS_DISABLE_PLUGINS"))
            found = plugin_entry_points(ENTRY_POINT_GROUP) if entry_points is None else entry_points
            for entry_point in _unique(found):
                info = _describe(entry_point)
                if info.name in disabled:
                    self._disabled.append(info)
                else:
                    self._add(info, entry_point.load)
        self._raise_if_strict(0)

    @property
    def plugins(self) -> tuple[PluginInfo, ...]:
        """Every healthy plugin, the built-in one first."""
        return tuple(self._info.values())

    @property
    def features(self) -> tuple[InstalledFeature, ...]:
        """Every feature of a healthy plugin."""
        return tuple(self._features.values())

    @property
    def broken(self) -> tuple[BrokenPlugin, ...]:
        """Quarantined plugins, in discovery order."""
        return tuple(self._broken)

    @property
    def featureless(self) -> tuple[PluginInfo, ...]:
        """Healthy plugins that register no feature: nothing of theirs can run, so list and doctor warn."""
        owners = {f.plugin.name for f in self._features.values()}
        return tuple(p for p in self._info.values() if p.name not in owners)

    @property
    def disabled(self) -> tuple[PluginInfo, ...]:
        """Plugins skipped because MISTRALRS_DISABLE_PLUGINS names them."""
        return tuple(self._disabled)

    def probe_system(self) -> SystemSnapshot:
        """This machine's snapshot, with every plugin's probe facts merged in (computed once)."""
        if self._system is None:
            system = probe_system([r for f in self.features for r in f.manifest.modules], self._environ)
            for facts in self._mapping_results("mistralrs_probe_system", system=system):
                system = system.with_facts({k: v for k, v in facts.items() if k not in system.libraries})
            self._system = system
        return self._system

    def call_each(self, hook: str, check: Callable[[Any], bool | str], **kwargs: Any) -> list[tuple[PluginInfo, Any]]:
        """Call one hook on every healthy plugin; results failing ``check`` quarantine their plugin.

        ``check`` answers True/False, or a problem text ("" when the result is fine). Returns (plugin, result)
        pairs for results that are not None.
        """
        results = []
        broken_before = len(self._broken)
        for impl in self._impls(hook):
            info = self._info[impl.plugin_name]
            result = self._guarded(info, f"hook {hook}", functools.partial(_call, impl, kwargs))
            if result is None or info.name not in self._info:
                continue
            problem = _problem(check(result), result)
            if problem:
                self._quarantine(info, f"hook {hook}", problem)
                continue
            results.append((info, result))
        self._raise_if_strict(broken_before)
        return results

    def call_plugin(self, plugin: str, hook: str, check: Callable[[Any], bool], **kwargs: Any) -> Any:
        """Call one hook on one healthy plugin only (``mistralrs_launch_environment`` on the feature's owner).

        Returns its result, or None when it has no such hook, returned None, or broke and was quarantined.
        A MistralrsError it raises on purpose (bad user input, such as an impossible world size) propagates
        with its message and fix; any other failure, or a result failing ``check``, quarantines the plugin.
        """
        for impl in self._impls(hook):
            if impl.plugin_name != plugin or plugin not in self._info:
                continue
            info = self._info[plugin]
            try:
                result = _call(impl, kwargs)
            except (KeyboardInterrupt, MistralrsError):
                raise
            except BaseException as exc:  # noqa: BLE001 - SystemExit from a plugin must not end the program
                self._quarantine(info, f"hook {hook}", f"{type(exc).__name__}: {exc}", traceback=_traceback())
                self._raise_if_strict(len(self._broken) - 1)
                return None
            if result is None or info.name not in self._info:
                return None
            if not check(result):
                self._quarantine(info, f"hook {hook}",
                                 f"returned {type(result).__name__}, which breaks the hook's contract")
                self._raise_if_strict(len(self._broken) - 1)
                return None
            return result
        return None

    def collect(self, hook: str, kind: type, active: frozenset[str], **kwargs: Any) -> list[Any]:
        """Items of type ``kind`` that every plugin returns from a list hook, in plugin order.

        A plugin whose result is not a sequence of ``kind``, or that returns a backend of a
        feature that is not active or not its own, breaks the contract and is quarantined.
        """
        from mistralrs_torch.ops import contract_problem

        def valid(result: Any) -> str:
            if not isinstance(result, (list, tuple)):
                return f"returned {type(result).__name__}, not a sequence of {kind.__name__}"
            return next((f"returned {p}" for p in (contract_problem(item, kind) for item in result) if p), "")

        items = []
        broken_before = len(self._broken)
        for info, result in self._without_strict(lambda: self.call_each(hook, valid, active=active, **kwargs)):
            own = {f.manifest.name for f in self.features if f.plugin == info}
            stray = [i for i in result if getattr(i, "feature", None) not in own & active]
            if stray:
                self._quarantine(info, f"hook {hook}", f"returned {type(stray[0]).__name__} for feature "
                                 f"{getattr(stray[0], 'feature', None)!r}, "
                                 "which is not an active feature of this plugin")
                continue
            items += result
        self._raise_if_strict(broken_before)
        return items

    def _mapping_results(self, hook: str, **kwargs: Any) -> list[Any]:
        return [r for _, r in self.call_each(hook, lambda r: isinstance(r, Mapping), **kwargs)]

    def _impls(self, hook: str) -> list[pluggy.HookImpl]:
        return list(getattr(self._pm.hook, hook).get_hookimpls())

    def _add(self, info: PluginInfo, load: Callable[[], object]) -> None:
        if info.name in self._info:
            self._quarantine(info, "discovery",
                             f"the plugin name {info.name!r} is already used by {self._info[info.name].distribution}")
            return
        plugin = self._guarded(info, "import", load)
        if plugin is None:
            return
        # Functions only: a plugin may well import its own `mistralrs_something` package.
        unknown = [a for a in dir(plugin) if a.startswith("mistralrs_") and a not in _HOOK_NAMES
                   and inspect.isroutine(getattr(plugin, a, None))]
        if unknown:
            import difflib  # only for this error: it costs milliseconds at every start-up

            hint = difflib.get_close_matches(unknown[0], _HOOK_NAMES, n=1)
            suggestion = f" (did you mean {hint[0]!r}?)" if hint else f"; known hooks: {', '.join(_HOOK_NAMES)}"
            self._quarantine(info, "register", f"unknown hook {unknown[0]!r}{suggestion}")
            return
        if self._guarded(info, "register", lambda: self._register(plugin, info.name)) is None:
            return
        self._info[info.name] = info
        impls = [i for i in self._impls("mistralrs_features") if i.plugin_name == info.name]
        manifests = self._guarded(info, "hook mistralrs_features", lambda: _manifests_of(impls))
        if manifests is not None:
            self._accept_features(info, manifests)

    def _register(self, plugin: object, name: str) -> bool:
        self._pm.register(plugin, name=name)
        try:
            self._pm.check_pending()
        except pluggy.PluginValidationError:
            self._pm.unregister(name=name)
            raise
        return True

    def _accept_features(self, info: PluginInfo, returned: Sequence[object]) -> None:
        wrong = [m for m in returned if not isinstance(m, FeatureManifest)]
        if wrong:
            self._quarantine(info, "manifest",
                             f"mistralrs_features returned {type(wrong[0]).__name__}, not FeatureManifest")
            return
        manifests = [m for m in returned if isinstance(m, FeatureManifest)]
        for manifest in manifests:
            if not supports_api_version(manifest.api_version):
                self._quarantine(info, "api-version", _api_version_problem(manifest, info),
                                 features=tuple(m.name for m in manifests))
                return
            owner = self._features.get(manifest.name)
            if owner is not None:
                self._quarantine(info, "manifest", f"feature {manifest.name!r} is already provided by plugin "
                                 f"{owner.plugin.name!r} ({owner.plugin.distribution})")
                return
        for manifest in manifests:
            self._features[manifest.name] = InstalledFeature(manifest, info)

    def _guarded(self, info: PluginInfo, stage: str, action: Callable[[], Any]) -> Any:
        try:
            return action()
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - SystemExit from a plugin must not end the program
            self._quarantine(info, stage, f"{type(exc).__name__}: {exc}", traceback=_traceback())
            return None

    def _without_strict(self, action: Callable[[], Any]) -> Any:
        strict, self._strict = self._strict, False
        try:
            return action()
        finally:
            self._strict = strict

    def _raise_if_strict(self, start: int) -> None:
        """Under strict mode, every plugin broken since ``start`` is fatal, all named in one error."""
        new = self._broken[start:]
        if self._strict and new:
            lines = [f"  - plugin {b.plugin.name!r} ({b.plugin.distribution}) is broken at {b.stage}: {b.error}: "
                     f"{b.fix}" for b in new]
            raise PluginError(f"{len(new)} broken plugin(s), fatal under MISTRALRS_STRICT_PLUGINS=1:\n"
                              + "\n".join(lines))

    def _quarantine(self, info: PluginInfo, stage: str, error: str, features: tuple[str, ...] = (),
                    traceback: str = "") -> None:
        declared = features or tuple(n for n, f in self._features.items() if f.plugin.name == info.name)
        broken = BrokenPlugin(info, stage, error, declared, traceback)
        if self._info.get(info.name) == info:
            del self._info[info.name]
            for name in declared:
                self._features.pop(name, None)
            if self._pm.has_plugin(info.name):
                self._pm.unregister(name=info.name)
        self._broken.append(broken)


def _api_version_problem(manifest: FeatureManifest, info: PluginInfo) -> str:
    ours = PLUGIN_API_VERSION.split(".")[0]
    text = (f"feature {manifest.name!r} targets plugin API {manifest.api_version!r}; mistralrs-torch {__version__} "
            f"supports {ours}.0 through {PLUGIN_API_VERSION}")
    if manifest.api_version.split(".")[0].isdigit() and int(manifest.api_version.split(".")[0]) < int(ours):
        return (f"{text}: {info.distribution} was written for an older plugin API (the releases named mistralrs*, "
                f"before mistralrs-torch); its authors update it as docs/writing-a-plugin.md#migrating-from-plugin-"
                f"api-1x says")
    return f"{text}: install a version of {info.distribution} written for it, or upgrade mistralrs-torch"


def _manifests_of(impls: Sequence[pluggy.HookImpl]) -> list[object]:
    try:
        # A plugin's answer, typed object by pluggy: a non-iterable one raises TypeError here, caught by the caller.
        return [m for impl in impls for m in cast("Iterable[object]", impl.function() or ())]
    except TypeError as exc:
        if "'priority'" in str(exc):  # FeatureManifest(priority=...) of plugin API 1.x
            raise TypeError(f"{exc} (plugin API 1.x's priority is selection_priority in 2.0: see "
                            "docs/writing-a-plugin.md#migrating-from-plugin-api-1x)") from exc
        raise


def _problem(verdict: bool | str, result: object) -> str:
    if isinstance(verdict, str):
        return verdict
    return "" if verdict else f"returned {type(result).__name__}, which breaks the hook's contract"


def _traceback() -> str:
    import traceback  # only when a plugin failed: it is not needed at start-up otherwise

    return traceback.format_exc()


def _call(impl: pluggy.HookImpl, kwargs: Mapping[str, Any]) -> Any:
    # As pluggy does: an implementation receives only the spec parameters it names.
    return impl.function(**{name: kwargs[name] for name in impl.argnames if name in kwargs})


def _unique(entry_points: Iterable[EntryPointLike]) -> list[EntryPointLike]:
    # The same distribution can be visible twice on sys.path (an editable and a regular install).
    seen: set[tuple[str, str]] = set()
    unique = []
    for entry_point in entry_points:
        if (entry_point.name, entry_point.value) not in seen:
            seen.add((entry_point.name, entry_point.value))
            unique.append(entry_point)
    return unique


def _describe(entry_point: EntryPointLike) -> PluginInfo:
    if isinstance(entry_point, PluginEntryPoint):
        return PluginInfo(entry_point.name, entry_point.distribution, entry_point.version, entry_point.value)
    dist = getattr(entry_point, "dist", None)
    name = dist.metadata["Name"] if dist is not None else "unknown distribution"
    version = dist.version if dist is not None else "unknown"
    return PluginInfo(entry_point.name, name, version, entry_point.value)

