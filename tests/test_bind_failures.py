"""A plugin whose backend hook fails when a runtime binds: visible in list --bind, resolve --explain, explain()
and doctor (an error there), with its own traceback on request; strict mode names every broken plugin."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mistralrs_torch import PluginError, PluginManager, Runtime

#: A feature that is active in auto mode on any machine and whose matmul hook raises at bind time.
_SOURCE = '''
from mistralrs_torch import FeatureManifest, hookimpl

FEATURE = FeatureManifest(name="shaky", summary="binds badly", distribution="shakyplug", provides=("matmul",))

@hookimpl
def mistralrs_features():
    return (FEATURE,)

@hookimpl
def mistralrs_matmul_backends(active):
    def load_vendor_library():
        raise OSError("libshaky.so: cannot open shared object file")
    load_vendor_library()
'''


@pytest.fixture
def shaky_site(tmp_path: Path, fake_distribution) -> Path:
    return fake_distribution(tmp_path / "site", "shakyplug", _SOURCE, entry_point="shaky")


def test_plain_list_stays_light_and_list_bind_shows_the_plugin_broken(run_cli, shaky_site: Path) -> None:
    env = {"PYTHONPATH": str(shaky_site)}
    light = json.loads(run_cli("plugins", "list", "--json", env=env).stdout)
    assert next(f for f in light["features"] if f["feature"] == "shaky")["status"] == "active"
    bound = run_cli("plugins", "list", "--bind", "--json", env=env)
    assert bound.returncode == 0, bound.stderr
    shaky = next(f for f in json.loads(bound.stdout)["features"] if f["plugin"] == "shaky")
    assert shaky["status"] == "broken" and shaky["feature"] == "shaky"
    reasons = " ".join(shaky["reasons"])
    assert "hook mistralrs_matmul_backends" in reasons and "libshaky.so" in reasons
    assert "MISTRALRS_DISABLE_PLUGINS=shaky" in reasons


def test_resolve_explain_names_the_broken_plugin_and_its_hook(run_cli, shaky_site: Path) -> None:
    result = run_cli("plugins", "resolve", "--explain", env={"PYTHONPATH": str(shaky_site)})
    assert result.returncode == 0, result.stderr
    assert "BROKEN plugin shaky (shakyplug) at hook mistralrs_matmul_backends: OSError: libshaky.so" in result.stdout
    assert "broken:\n  shaky (shakyplug)" in result.stdout


def test_explain_and_the_runtime_record_it(fake_plugin) -> None:
    entry_point = fake_plugin(_SOURCE, name="shaky")
    runtime = Runtime.create(manager=PluginManager(entry_points=[entry_point], environ={}), environ={})
    (broken,) = runtime.broken
    assert (broken.plugin.name, broken.stage, broken.features) == ("shaky", "hook mistralrs_matmul_backends",
                                                                    ("shaky",))
    assert "load_vendor_library" in broken.traceback
    assert runtime.explain()["broken"][0]["error"] == "OSError: libshaky.so: cannot open shared object file"


def test_doctor_makes_it_an_error_and_exits_one(run_cli, shaky_site: Path) -> None:
    result = run_cli("doctor", "--json", env={"PYTHONPATH": str(shaky_site)})
    assert result.returncode == 1, result.stdout
    features = json.loads(result.stdout)["sections"]["features"]
    (error,) = [c for c in features if c["status"] == "error"]
    assert error["name"] == "shaky" and "failed at bind time in hook mistralrs_matmul_backends" in error["message"]
    assert "MISTRALRS_DISABLE_PLUGINS=shaky" in error["fix"]


def test_traceback_shows_the_plugins_own_frames(run_cli, shaky_site: Path) -> None:
    plain = run_cli("plugins", "list", "--bind", env={"PYTHONPATH": str(shaky_site)})
    assert "Traceback" not in plain.stderr
    for args, env in ((("--traceback", "plugins", "list", "--bind"), {}),
                      (("plugins", "list", "--bind"), {"MISTRALRS_TRACEBACK": "1"})):
        shown = run_cli(*args, env={"PYTHONPATH": str(shaky_site), **env})
        assert "traceback of plugin shaky (shakyplug) at hook mistralrs_matmul_backends:" in shown.stderr
        assert "load_vendor_library" in shown.stderr and "Traceback (most recent call last)" in shown.stderr


def test_strict_mode_names_every_broken_plugin_not_the_first(fake_plugin) -> None:
    first = fake_plugin("raise ImportError('first is missing')\n", name="first")
    second = fake_plugin("raise ImportError('second is missing')\n", name="second")
    with pytest.raises(PluginError) as caught:
        PluginManager(entry_points=[first, second], environ={"MISTRALRS_STRICT_PLUGINS": "1"})
    message = str(caught.value)
    assert message.startswith("2 broken plugin(s), fatal under MISTRALRS_STRICT_PLUGINS=1")
    assert "first is missing" in message and "second is missing" in message
