"""adaptool's pytest plugin, as a plugin package uses it: the sharegpt plugin's own tests run
from its own folder, on the fixtures the ``pytest11`` entry point provides."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import REPO


def test_the_sharegpt_plugin_passes_its_own_tests_from_its_folder():
    folder = REPO / "plugins" / "adaptool-sharegpt"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert " passed" in done.stdout and "adaptool_" not in done.stderr


def test_the_fixtures_are_adaptools_own(pytestconfig):
    """The entry point is registered: pytest loaded the plugin module in this session too."""
    plugin = pytestconfig.pluginmanager.get_plugin("adaptool")
    assert plugin is not None and plugin.__name__ == "adaptool.testing.pytest_plugin"
    assert {"adaptool_plugins", "adaptool_tokenizer", "adaptool_model_dir", "adaptool_cli"} <= set(
        vars(plugin)
    )
