"""Discovery and quarantine with fake entry points beside the real installed plugins.

A plugin that fails to import (ImportError, SystemExit, any exception),
implements an unknown hook, declares a bad manifest, targets an unsupported
plugin API or raises inside a hook is quarantined: listed as broken with its
error and how to disable it, while every other plugin keeps working.
"""

from __future__ import annotations

import importlib.metadata
import sys
import uuid

import pytest

from mistralrs_torch import (
    ConfigError,
    PluginError,
    PluginManager,
    Selection,
    SelectionError,
    load_system,
    resolve,
)

GOOD = "goodfeat"

#: case -> (module source, stage, substrings of the error)
BAD_PLUGINS = {
    "import-error": ("raise ImportError('vendorlib is missing')\n", "import",
                     ("ImportError", "vendorlib is missing")),
    "system-exit": ("raise SystemExit(3)\n", "import", ("SystemExit", "3")),
    "exception": ("raise RuntimeError('kaboom at import')\n", "import", ("RuntimeError", "kaboom at import")),
    "manifest-error-at-import": (
        """
        from mistralrs_torch import FeatureManifest
        BAD = FeatureManifest(name="Bad_Name", summary="x", distribution="fake-bad")
        """, "import", ("ManifestError", "Bad_Name")),
    "misspelled-hook": (
        """
        from mistralrs_torch import hookimpl

        @hookimpl
        def mistralrs_featurs():
            return ()
        """, "register", ("mistralrs_featurs", "did you mean 'mistralrs_features'")),
    "hook-with-wrong-arguments": (
        """
        from mistralrs_torch import hookimpl

        @hookimpl
        def mistralrs_probe_system(sistem):
            return {}
        """, "register", ("sistem",)),
    "non-manifest": (
        """
        from mistralrs_torch import hookimpl

        @hookimpl
        def mistralrs_features():
            return ("cuda",)
        """, "manifest", ("str", "FeatureManifest")),
    "hook-raises": (
        """
        from mistralrs_torch import hookimpl

        @hookimpl
        def mistralrs_features():
            raise ValueError("cannot read my config")
        """, "hook mistralrs_features", ("ValueError", "cannot read my config")),
    "hook-raises-system-exit": (
        """
        from mistralrs_torch import hookimpl

        @hookimpl
        def mistralrs_features():
            raise SystemExit("bye")
        """, "hook mistralrs_features", ("SystemExit", "bye")),
    "api-version-3": (
        """
        from mistralrs_torch import FeatureManifest, hookimpl

        @hookimpl
        def mistralrs_features():
            return (FeatureManifest(name="futurefeat", summary="from the future", distribution="fake-bad",
                                    api_version="3.0"),)
        """, "api-version", ("'3.0'", "2.0", "futurefeat", "upgrade mistralrs-torch")),
    "api-version-1": (
        """
        from mistralrs_torch import FeatureManifest, hookimpl

        @hookimpl
        def mistralrs_features():
            return (FeatureManifest(name="pastfeat", summary="from the past", distribution="fake-bad",
                                    api_version="1.0"),)
        """, "api-version", ("'1.0'", "2.0", "pastfeat", "docs/writing-a-plugin.md#migrating-from-plugin-api-1x")),
    "clash-with-installed-feature": (
        """
        from mistralrs_torch import FeatureManifest, hookimpl

        @hookimpl
        def mistralrs_features():
            return (FeatureManifest(name="mkl", summary="another mkl", distribution="fake-bad"),)
        """, "manifest", ("'mkl'", "mistralrs-torch-mkl")),
    "clash-with-builtin-cpu": (
        """
        from mistralrs_torch import FeatureManifest, hookimpl

        @hookimpl
        def mistralrs_features():
            return (FeatureManifest(name="cpu", summary="another cpu", distribution="fake-bad"),)
        """, "manifest", ("'cpu'", "builtin")),
}


def _manager_with_bad_plugin(fake_plugin, installed_entry_points, good_plugin_source_for, case, environ=None):
    source = BAD_PLUGINS[case][0]
    bad = fake_plugin(source, name="bad")
    good = fake_plugin(good_plugin_source_for(GOOD), name="good")
    return PluginManager(entry_points=[*installed_entry_points, bad, good], environ=environ or {})


@pytest.mark.parametrize("case", sorted(BAD_PLUGINS))
def test_a_bad_plugin_is_quarantined_with_its_error_and_fix(fake_plugin, installed_entry_points,
                                                            good_plugin_source_for, case) -> None:
    _, stage, fragments = BAD_PLUGINS[case]
    manager = _manager_with_bad_plugin(fake_plugin, installed_entry_points, good_plugin_source_for, case)
    assert len(manager.broken) == 1, manager.broken
    broken = manager.broken[0]
    assert broken.plugin.name == "bad"
    assert broken.stage == stage
    for fragment in fragments:
        assert fragment in broken.error
    assert "MISTRALRS_DISABLE_PLUGINS=bad" in broken.fix
    assert "bad" not in {p.name for p in manager.plugins}


@pytest.mark.parametrize("case", sorted(BAD_PLUGINS))
def test_every_other_plugin_keeps_working_next_to_a_bad_one(fake_plugin, installed_entry_points,
                                                            good_plugin_source_for, all_features, case) -> None:
    manager = _manager_with_bad_plugin(fake_plugin, installed_entry_points, good_plugin_source_for, case)
    assert {f.manifest.name for f in manager.features} == all_features | {GOOD}
    assert {"builtin", "good", "cuda", "flash_attn", "mkl"} <= {p.name for p in manager.plugins}
    resolution = resolve(manager.features, manager.broken, Selection(), load_system("h100"), {})
    assert set(resolution.active) == {"cuda", "cudnn", "flash-attn-v3", "mkl", GOOD, "cpu"}
    broken = [f for f in resolution.features if f.status == "broken"]
    assert broken and all(f.plugin.name == "bad" for f in broken)
    assert all("MISTRALRS_DISABLE_PLUGINS=bad" in " ".join(f.reasons) for f in broken)


@pytest.mark.parametrize("case", sorted(BAD_PLUGINS))
def test_strict_mode_makes_a_bad_plugin_fatal(fake_plugin, installed_entry_points, good_plugin_source_for,
                                             case) -> None:
    with pytest.raises(PluginError) as caught:
        _manager_with_bad_plugin(fake_plugin, installed_entry_points, good_plugin_source_for, case,
                                 environ={"MISTRALRS_STRICT_PLUGINS": "1"})
    message = str(caught.value)
    assert "'bad'" in message
    assert "MISTRALRS_STRICT_PLUGINS=1" in message
    assert "MISTRALRS_DISABLE_PLUGINS=bad" in message


def test_strict_mode_with_healthy_plugins_loads_them_all(all_features) -> None:
    manager = PluginManager(environ={"MISTRALRS_STRICT_PLUGINS": "1"})
    assert manager.broken == ()
    assert {f.manifest.name for f in manager.features} == all_features


def test_an_unsupported_api_version_names_the_declared_features_as_broken(fake_plugin, installed_entry_points,
                                                                          good_plugin_source_for) -> None:
    manager = _manager_with_bad_plugin(fake_plugin, installed_entry_points, good_plugin_source_for, "api-version-3")
    assert manager.broken[0].features == ("futurefeat",)
    resolution = resolve(manager.features, manager.broken, Selection(), load_system("xeon-cpu"), {})
    assert resolution.status("futurefeat").status == "broken"


@pytest.mark.parametrize("version", ["3.0", "2.9", "1.0", "1.9", "0.9", "one", "2"])
def test_api_versions_this_core_cannot_serve_are_refused(fake_plugin, version) -> None:
    entry_point = fake_plugin(f"""
        from mistralrs_torch import FeatureManifest, hookimpl

        @hookimpl
        def mistralrs_features():
            return (FeatureManifest(name="versioned", summary="x", distribution="fake", api_version={version!r}),)
        """, name="versioned")
    manager = PluginManager(entry_points=[entry_point], environ={})
    assert [b.stage for b in manager.broken] == ["api-version"]
    assert "versioned" not in {f.manifest.name for f in manager.features}


def test_a_plugin_written_for_this_api_version_loads(fake_plugin) -> None:
    from mistralrs_torch import PLUGIN_API_VERSION

    entry_point = fake_plugin(f"""
        from mistralrs_torch import FeatureManifest, hookimpl

        @hookimpl
        def mistralrs_features():
            return (FeatureManifest(name="current", summary="x", distribution="fake",
                                    api_version={PLUGIN_API_VERSION!r}),)
        """, name="current")
    manager = PluginManager(entry_points=[entry_point], environ={})
    assert manager.broken == ()
    assert {f.manifest.name for f in manager.features} == {"cpu", "current"}


def test_a_keyboard_interrupt_during_import_is_not_swallowed(fake_plugin) -> None:
    entry_point = fake_plugin("raise KeyboardInterrupt\n", name="interrupted")
    with pytest.raises(KeyboardInterrupt):
        PluginManager(entry_points=[entry_point], environ={})


def test_a_plugin_object_named_by_module_and_attribute_loads(fake_plugin) -> None:
    entry_point = fake_plugin("""
        from mistralrs_torch import FeatureManifest, hookimpl

        class _Plugin:
            @hookimpl
            def mistralrs_features(self):
                return (FeatureManifest(name="objfeat", summary="x", distribution="fake"),)

        PLUGIN = _Plugin()
        """, name="objplug")
    attr_entry_point = importlib.metadata.EntryPoint(name="objplug", value=f"{entry_point.value}:PLUGIN",
                                                     group=entry_point.group)
    manager = PluginManager(entry_points=[attr_entry_point], environ={})
    assert manager.broken == ()
    assert {f.manifest.name for f in manager.features} == {"cpu", "objfeat"}


def test_the_same_entry_point_seen_twice_loads_once(fake_plugin, good_plugin_source_for) -> None:
    entry_point = fake_plugin(good_plugin_source_for(GOOD), name="good")
    manager = PluginManager(entry_points=[entry_point, entry_point], environ={})
    assert manager.broken == ()
    assert [p.name for p in manager.plugins] == ["builtin", "good"]


def test_two_plugins_with_one_name_quarantine_the_second(fake_plugin, good_plugin_source_for) -> None:
    first = fake_plugin(good_plugin_source_for("firstfeat"), name="twin")
    second = fake_plugin(good_plugin_source_for("secondfeat"), name="twin")
    manager = PluginManager(entry_points=[first, second], environ={})
    assert [(b.plugin.name, b.stage) for b in manager.broken] == [("twin", "discovery")]
    assert {f.manifest.name for f in manager.features} == {"cpu", "firstfeat"}


def test_a_plugin_may_import_its_own_mistralrs_prefixed_package(fake_plugin) -> None:
    # A third-party plugin's entry-point module naturally imports its own package
    # (mistralrs_rocm.plugin doing `import mistralrs_rocm.kernels`); that binds a
    # module named mistralrs_* in the plugin's namespace, which is not a hook.
    helper = f"mistralrs_fakehelper_{uuid.uuid4().hex[:12]}"
    package = fake_plugin.folder / helper
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "kernels.py").write_text("READY = True\n")
    fake_plugin.created.extend([helper, f"{helper}.kernels"])
    entry_point = fake_plugin(f"""
        import {helper}.kernels
        from mistralrs_torch import FeatureManifest, hookimpl

        @hookimpl
        def mistralrs_features():
            return (FeatureManifest(name="rocm", summary="x", distribution="mistralrs-rocm"),)
        """, name="rocm")
    manager = PluginManager(entry_points=[entry_point], environ={})
    assert manager.broken == ()
    assert {f.manifest.name for f in manager.features} == {"cpu", "rocm"}


def test_a_features_hook_returning_none_adds_nothing_and_is_not_broken(fake_plugin) -> None:
    # The hook specifications say "Returning None means 'nothing to add'".
    entry_point = fake_plugin("""
        from mistralrs_torch import hookimpl

        @hookimpl
        def mistralrs_features():
            return None
        """, name="nothing")
    manager = PluginManager(entry_points=[entry_point], environ={})
    assert manager.broken == ()
    assert "nothing" in {p.name for p in manager.plugins}
    assert {f.manifest.name for f in manager.features} == {"cpu"}


# --- Hooks raising after discovery --------------------------------------------------------------------

PROBE_PLUGIN = """
    from mistralrs_torch import FeatureManifest, hookimpl

    @hookimpl
    def mistralrs_features():
        return (FeatureManifest(name="probefeat", summary="x", distribution="fake-prober"),)

    @hookimpl
    def mistralrs_probe_system(system):
        {body}
    """


@pytest.mark.parametrize("body", ["raise RuntimeError('probe exploded')", "raise SystemExit('probe exploded')",
                                  "return ['probe exploded']"])
def test_a_probe_hook_that_fails_quarantines_its_plugin_and_its_features_become_broken(
        fake_plugin, installed_entry_points, good_plugin_source_for, all_features, body) -> None:
    prober = fake_plugin(PROBE_PLUGIN.format(body=body), name="prober")
    good = fake_plugin(good_plugin_source_for(GOOD), name="good")
    manager = PluginManager(entry_points=[prober, *installed_entry_points, good], environ={})
    assert manager.broken == ()
    assert "probefeat" in {f.manifest.name for f in manager.features}
    system = manager.probe_system()
    assert [(b.plugin.name, b.stage) for b in manager.broken] == [("prober", "hook mistralrs_probe_system")]
    assert manager.broken[0].features == ("probefeat",)
    assert {f.manifest.name for f in manager.features} == all_features | {GOOD}
    resolution = resolve(manager.features, manager.broken, Selection(), system, {})
    status = resolution.status("probefeat")
    assert status.status == "broken"
    assert "MISTRALRS_DISABLE_PLUGINS=prober" in " ".join(status.reasons)
    assert resolution.status(GOOD).status == "active"
    assert resolution.status("cpu").status == "active"


def test_a_probe_hook_raising_in_strict_mode_is_fatal(fake_plugin) -> None:
    prober = fake_plugin(PROBE_PLUGIN.format(body="raise RuntimeError('probe exploded')"), name="prober")
    manager = PluginManager(entry_points=[prober], environ={"MISTRALRS_STRICT_PLUGINS": "1"})
    with pytest.raises(PluginError, match="probe exploded"):
        manager.probe_system()


def test_probe_facts_are_merged_but_never_overwrite_earlier_facts(fake_plugin) -> None:
    first = fake_plugin("""
        from mistralrs_torch import hookimpl

        @hookimpl
        def mistralrs_probe_system(system):
            facts = {name: "overwritten" for name in system.libraries}
            facts["probefact"] = "1.2"
            return facts
        """, name="first")
    second = fake_plugin("""
        from mistralrs_torch import hookimpl

        @hookimpl
        def mistralrs_probe_system(system):
            return {"probefact": "9.9", "otherfact": ""}
        """, name="second")
    quiet = fake_plugin("""
        from mistralrs_torch import hookimpl

        @hookimpl
        def mistralrs_probe_system(system):
            return None
        """, name="quiet")
    manager = PluginManager(entry_points=[first, second, quiet], environ={})
    system = manager.probe_system()
    assert manager.broken == ()
    assert system.libraries["probefact"] == "1.2"
    assert system.libraries["otherfact"] == ""
    assert "overwritten" not in system.libraries.values()
    assert manager.probe_system() is system


def test_explicitly_selecting_a_feature_of_a_broken_plugin_names_the_plugin(fake_plugin) -> None:
    prober = fake_plugin(PROBE_PLUGIN.format(body="raise RuntimeError('probe exploded')"), name="prober")
    manager = PluginManager(entry_points=[prober], environ={})
    system = manager.probe_system()
    with pytest.raises(SelectionError) as caught:
        resolve(manager.features, manager.broken, Selection("explicit", ("probefeat",), "--features"), system, {})
    (violation,) = caught.value.violations
    assert violation.rule == "broken"
    assert "prober" in violation.message and "probe exploded" in violation.message
    assert "probefeat" in violation.fix


# --- Environment switches -------------------------------------------------------------------------------


def test_disable_plugins_blocks_the_named_plugins(all_features) -> None:
    manager = PluginManager(environ={"MISTRALRS_DISABLE_PLUGINS": "cuda, flash_attn"})
    assert {p.name for p in manager.disabled} == {"cuda", "flash_attn"}
    assert {p.distribution for p in manager.disabled} == {"mistralrs-torch-cuda", "mistralrs-torch-flash-attn"}
    disabled = {"cuda", "cudnn", "flash-attn", "flash-attn-v3"}
    assert {f.manifest.name for f in manager.features} == all_features - disabled
    assert manager.broken == ()
    resolution = resolve(manager.features, manager.broken, Selection(), load_system("multi-gpu-8xh100"), {})
    assert set(resolution.active) == {"mkl", "cpu"}
    nccl = resolution.status("nccl")
    assert nccl.status == "unavailable"
    assert "cuda" in " ".join(nccl.reasons)


def test_disabled_plugins_are_never_imported(fake_plugin) -> None:
    entry_point = fake_plugin("raise SystemExit(3)\n", name="broken")
    manager = PluginManager(entry_points=[entry_point], environ={"MISTRALRS_DISABLE_PLUGINS": "other,broken"})
    assert manager.broken == ()
    assert [p.name for p in manager.disabled] == ["broken"]
    assert entry_point.value not in sys.modules


def test_autoload_off_loads_only_the_builtin_cpu(fake_plugin) -> None:
    entry_point = fake_plugin("raise SystemExit(3)\n", name="broken")
    manager = PluginManager(entry_points=[entry_point], environ={"MISTRALRS_PLUGIN_AUTOLOAD": "0"})
    assert [p.name for p in manager.plugins] == ["builtin"]
    assert [f.manifest.name for f in manager.features] == ["cpu"]
    assert manager.broken == ()
    assert entry_point.value not in sys.modules
    resolution = resolve(manager.features, manager.broken, Selection(), load_system("h100"), {})
    assert resolution.active == ("cpu",)


def test_autoload_off_for_the_installed_plugins() -> None:
    manager = PluginManager(environ={"MISTRALRS_PLUGIN_AUTOLOAD": "0"})
    assert [f.manifest.name for f in manager.features] == ["cpu"]


def test_no_plugin_installed_still_resolves_the_generic_cpu() -> None:
    manager = PluginManager(entry_points=[], environ={})
    for profile in ("h100", "apple-m2", "epyc-cpu"):
        resolution = resolve(manager.features, manager.broken, Selection(), load_system(profile), {})
        assert resolution.active == ("cpu",)


@pytest.mark.parametrize("variable", ["MISTRALRS_STRICT_PLUGINS", "MISTRALRS_PLUGIN_AUTOLOAD"])
def test_a_non_boolean_switch_is_a_config_error(variable) -> None:
    with pytest.raises(ConfigError) as caught:
        PluginManager(entry_points=[], environ={variable: "maybe"})
    assert variable in str(caught.value)
    assert "'maybe'" in str(caught.value)


@pytest.mark.parametrize("value", ["1", "true", "yes", "on", "TRUE"])
def test_strict_mode_accepts_the_usual_true_spellings(fake_plugin, value) -> None:
    entry_point = fake_plugin("raise SystemExit(3)\n", name="broken")
    with pytest.raises(PluginError):
        PluginManager(entry_points=[entry_point], environ={"MISTRALRS_STRICT_PLUGINS": value})


def test_strict_mode_off_spellings_keep_a_broken_plugin_a_warning(fake_plugin) -> None:
    for value in ("0", "false", "no", "off", ""):
        entry_point = fake_plugin("raise SystemExit(3)\n", name="broken")
        manager = PluginManager(entry_points=[entry_point], environ={"MISTRALRS_STRICT_PLUGINS": value})
        assert [b.plugin.name for b in manager.broken] == ["broken"]


def test_a_plugin_api_1_manifest_or_backend_is_refused_pointing_at_the_migration(fake_plugin) -> None:
    manifest_v1 = fake_plugin(
        """
        from mistralrs_torch import FeatureManifest, hookimpl

        @hookimpl
        def mistralrs_features():
            return (FeatureManifest(name="oldmanifest", summary="x", distribution="old", priority=5),)
        """,
        name="oldmanifest",
    )
    backend_v1 = fake_plugin(
        """
        from mistralrs_torch import FeatureManifest, Support, hookimpl

        @hookimpl
        def mistralrs_features():
            return (FeatureManifest(name="oldbackend", summary="x", distribution="old", provides=("matmul",)),)

        class Old:
            name, feature, priority = "old-matmul", "oldbackend", 10
            def supports(self, call):
                return Support(True)
            def linear(self, x, weight, bias=None):
                return x

        @hookimpl
        def mistralrs_matmul_backends(active):
            return (Old(),) if "oldbackend" in active else ()
        """,
        name="oldbackend",
    )
    manager = PluginManager(entry_points=[manifest_v1, backend_v1], environ={})
    (broken,) = manager.broken
    assert broken.stage == "hook mistralrs_features" and "selection_priority" in broken.error
    assert "#migrating-from-plugin-api-1x" in broken.error
    from mistralrs_torch import MatmulBackend

    manager.collect("mistralrs_matmul_backends", MatmulBackend, frozenset({"cpu", "oldbackend"}))
    late = manager.broken[-1]
    assert late.plugin.name == "oldbackend" and late.stage == "hook mistralrs_matmul_backends"
    assert late.error == (
        "returned Old has no dispatch_priority (plugin API 1.x called it priority: see "
        "docs/writing-a-plugin.md#migrating-from-plugin-api-1x)"
    )
