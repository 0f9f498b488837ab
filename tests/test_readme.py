"""The README stays true: every setting documented, the two set-up commands exist and CI runs the test one."""

from __future__ import annotations

import re

from space.settings import Settings, env_name
from tests.conftest import REPO

README = (REPO / "README.md").read_text()


def test_every_setting_is_in_the_configuration_table() -> None:
    table = README[README.index("## Configuration") : README.index("## HTTP API")]
    missing = [env_name(name) for name in Settings.model_fields if f"`{env_name(name)}`" not in table]
    assert not missing, f"settings missing from the README's configuration table: {missing}"


def test_the_two_commands_exist_and_ci_runs_the_test_command() -> None:
    assert "make run" in README and "make test" in README
    targets = set(re.findall(r"^([a-z-]+):", (REPO / "Makefile").read_text(), flags=re.M))
    assert {"run", "test", "container-test"} <= targets
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in ci and "make container-test" in ci
