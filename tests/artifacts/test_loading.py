"""Opening adapters and merged models: refusals, plugins re-created as recorded."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from adaptool import AdapterError, PluginError
from adaptool.artifacts.loading import open_target, recorded_formatter, recorded_quantizer
from adaptool.cli import build_app
from adaptool.errors import AdaptoolWarning


def test_targets_that_cannot_be_opened(tmp_path, registry, plugins):
    with pytest.raises(AdapterError, match="not a directory"):
        open_target(tmp_path / "nope")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    (pickled / "adapter_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(AdapterError, match="only pickle weights"):
        open_target(pickled)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text("{not json")
    result = CliRunner().invoke(build_app(plugins), ["generate", str(broken), "hi"])
    assert result.exit_code == 2 and "not a valid peft adapter config" in result.output


def _with_manifest(adapter, tmp_path, change):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(adapter, copy)
    manifest = json.loads((copy / "adaptool.json").read_text())
    change(manifest)
    (copy / "adaptool.json").write_text(json.dumps(manifest))
    return copy


def test_options_the_installed_plugin_no_longer_accepts_are_a_clear_error(
    adapter, tmp_path, plugins
):
    """Never dropped silently, never a pydantic traceback: the plugin, the option and both
    versions are named."""
    from adaptool.artifacts.manifest import read_manifest

    def renamed_option(manifest):
        manifest["formatter"]["options"]["tag_column"] = "labels"  # an option it never had
        manifest["formatter"]["version"] = "0"

    copy = _with_manifest(adapter, tmp_path, renamed_option)
    with pytest.raises(PluginError) as err:
        recorded_formatter(read_manifest(copy), str(copy))
    message = str(err.value)
    assert "formatter 'quote-tags'" in message and "tag_column" in message
    assert "version 0" in message and "version 1 is installed" in message

    def wrong_type(manifest):
        manifest["quantization"] = {"backend": "bnb-8bit", "options": {"threshold": "high"}}

    copy = _with_manifest(adapter, tmp_path / "q", wrong_type)
    with pytest.raises(PluginError, match=r"quantizer 'bnb-8bit' does not accept .*threshold"):
        recorded_quantizer(read_manifest(copy), str(copy))
    result = CliRunner().invoke(build_app(plugins), ["generate", str(copy), "x"])
    assert result.exit_code == 2 and "threshold" in result.output
    assert "Traceback" not in result.output


def test_a_formatter_of_another_version_is_used_with_a_warning(adapter, tmp_path, plugins):
    from adaptool.artifacts.manifest import read_manifest

    def older(manifest):
        manifest["formatter"]["version"] = "0"

    copy = _with_manifest(adapter, tmp_path, older)
    with pytest.warns(AdaptoolWarning, match="version 0 of 'quote-tags'; version 1 is installed"):
        formatter = recorded_formatter(read_manifest(copy), str(copy))
    assert formatter.name == "quote-tags"
    args = ["generate", str(copy), "Be yourself.", "--json", "--max-new-tokens", "2"]
    result = CliRunner().invoke(build_app(plugins), args)
    assert result.exit_code == 0, result.output
    assert result.output.count("warning: ") == 1 and "may differ" in result.output


def test_a_recorded_formatter_that_cannot_be_recreated_leaves_raw_prompts(
    adapter, tmp_path, plugins
):
    def gone(manifest):
        manifest["formatter"] = {"name": "shout", "version": "1", "options": {}}

    copy = _with_manifest(adapter, tmp_path, gone)
    target = open_target(copy)
    assert target.formatter is None and "unknown formatter 'shout'" in str(target.formatter_error)
    refused = CliRunner().invoke(build_app(plugins), ["generate", str(copy), "x"])
    assert refused.exit_code == 2 and "--raw" in refused.output
    args = ["generate", str(copy), "x", "--raw", "--max-new-tokens", "2"]
    assert CliRunner().invoke(build_app(plugins), args).exit_code == 0


def test_an_absurd_adapter_config_is_refused_before_memory_is_spent(adapter, tmp_path):
    """An adapter config claiming r = 200000 (its tensors are r = 8) would allocate about a
    gigabyte before failing; it is checked on the meta device first."""
    import shutil
    import subprocess
    import sys

    copy = tmp_path / "absurd"
    shutil.copytree(adapter, copy)
    config = json.loads((copy / "adapter_config.json").read_text())
    config["r"] = 200_000
    (copy / "adapter_config.json").write_text(json.dumps(config))
    code = f"""
import json
from adaptool.artifacts.loading import open_target
from adaptool.errors import AdapterError
from adaptool.testing import peak_rss_mb, rss_mb
import torch, peft, transformers
from adaptool.plugins import load_plugins, use_plugins
use_plugins(load_plugins(entry_points=False))
baseline = rss_mb()
try:
    open_target({str(copy)!r})
    said = "opened"
except AdapterError as exc:
    said = str(exc)
print(json.dumps({{"said": said, "growth": peak_rss_mb() - baseline}}))
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert "does not fit the base" in result["said"]
    assert result["growth"] < 300, result  # r = 200000 would take ~1 GB


def test_a_recipe_whose_adapter_cannot_fit_in_memory_is_refused_before_allocating(
    tmp_path, tiny_bloom_dir, plugins, monkeypatch
):
    from types import SimpleNamespace

    import psutil

    from adaptool.errors import ModelError
    from adaptool.recipe import load_recipe
    from adaptool.training.run import train
    from tests.helpers import recipe_file

    recipe = load_recipe(recipe_file(tmp_path, tiny_bloom_dir, steps=1), ["peft.r=4096"])
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=64 << 20))
    with pytest.raises(ModelError, match=r"trainable parameters: .* GiB .* Lower peft.r"):
        train(recipe)
    assert not (tmp_path / "out").exists()


SHOUT = """
import adaptool


class Shout(adaptool.Formatter):
    name = "shout"

    def columns(self):
        return ["quote"]


@adaptool.hookimpl
def register_formatters(register):
    register(Shout)
"""


def test_a_missing_plugin_names_the_package_and_a_disabled_one_says_so(tmp_path, monkeypatch):
    """The manifest records which distribution provided each plugin: reopening names it."""
    from adaptool.artifacts.layout import Kind
    from adaptool.artifacts.loading import recorded_formatter
    from adaptool.artifacts.manifest import BaseModelRecord, PluginRecord, new_manifest
    from adaptool.plugins import load_plugins, use_plugins
    from adaptool.testing import install_fake_plugin

    record = PluginRecord("shout", "1", {}, "adaptool-shout", "0.3.0")
    manifest = new_manifest(Kind.ADAPTER, BaseModelRecord("m"), formatter=record)
    use_plugins(load_plugins(entry_points=False, disabled=[]))
    with pytest.raises(
        PluginError, match=r"install it with `adaptool plugins install adaptool-shout==0\.3\.0`"
    ):
        recorded_formatter(manifest, "out")
    site = install_fake_plugin(
        tmp_path / "site", distribution="adaptool-shout", module="shout_fmt", source=SHOUT
    )
    monkeypatch.syspath_prepend(str(site))
    use_plugins(load_plugins(disabled=["adaptool-shout"]))
    with pytest.raises(PluginError, match="installed here but disabled"):
        recorded_formatter(manifest, "out")
    use_plugins(load_plugins(disabled=[]))
    assert recorded_formatter(manifest, "out").name == "shout"
