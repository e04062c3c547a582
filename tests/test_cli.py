"""The `claims-harness` console script: every subcommand reaches its module's parser with the remaining arguments,
the installed entry point is harness.cli:main, and scripts/ only import the installed package (no sys.path edits)."""

from __future__ import annotations

import importlib.metadata
import pathlib
import subprocess
import sys

import pytest

from harness import cli

REPO = pathlib.Path(__file__).resolve().parent.parent


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in cli.COMMANDS)


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_each_command_shows_its_own_options(command, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main([command, "--help"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: claims-harness {command} ")


def test_the_remaining_arguments_reach_the_command(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["control-set", "--seed", "not-a-number"])
    assert done.value.code == 2
    assert "claims-harness control-set: error: argument --seed: invalid int value: 'not-a-number'" in capsys.readouterr().err


def test_an_unknown_or_missing_command_is_a_usage_error(capsys):
    for argv in (["train"], []):
        with pytest.raises(SystemExit) as done:
            cli.main(argv)
        assert done.value.code == 2
    assert "invalid choice: 'train'" in capsys.readouterr().err


def test_the_installed_console_script_is_harness_cli_main():
    (entry,) = importlib.metadata.entry_points(group="console_scripts", name="claims-harness")
    assert entry.value == "harness.cli:main"
    script = pathlib.Path(sys.executable).parent / "claims-harness"
    done = subprocess.run([str(script), "dashboard", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "--feature" in done.stdout, done.stderr


def test_scripts_import_the_installed_package_and_still_run():
    for path in sorted((REPO / "scripts").glob("*.py")) + sorted((REPO / "harness" / "cli").glob("*.py")):
        assert "sys.path" not in path.read_text(), f"{path.relative_to(REPO)} edits sys.path"
    done = subprocess.run([sys.executable, "scripts/make_control_set.py", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "--seed" in done.stdout, done.stderr
