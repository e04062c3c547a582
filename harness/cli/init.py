"""Start a folder of your own claims: a starter evals/claims.toml, a CI job, pytest's settings; nothing overwritten.

The starter registry has one example claim per kind of measure (one active, the others commented out) and a
commented [[profile]] stub; `pytest --regen-all` then `pytest` in the folder gate them (README, "Your own claims").
"""

from __future__ import annotations

import argparse
import importlib.resources
import pathlib
import shutil
import sys

from harness.errors import InputError

STARTER = importlib.resources.files("harness.cli") / "starter"
# starter file -> where it goes in the folder
FILES = {"claims.toml": "evals/claims.toml", "claims-ci.yml": "evals/claims-ci.yml", "pytest.ini": "pytest.ini"}
# files pytest may take its settings from: where one exists, pytest.ini is not written (it would take precedence)
PYTEST_SETTINGS = ("pytest.ini", ".pytest.ini", "pytest.toml", ".pytest.toml", "pyproject.toml", "tox.ini", "setup.cfg")


def plan(folder: pathlib.Path) -> tuple[dict[str, pathlib.Path], list[str]]:
    """({starter file: target}, notes): what init writes in `folder`; a target that exists is an InputError."""
    settings = [name for name in PYTEST_SETTINGS if (folder / name).exists()]
    targets = {src: folder / dst for src, dst in FILES.items() if not (dst == "pytest.ini" and settings)}
    notes = [f"pytest.ini not written: pytest takes its settings from {settings[0]}; its claims_registry must be "
             f"evals/claims.toml (the default) or name your registry"] if settings else []
    for target in targets.values():
        if target.exists():
            raise InputError(f"{target}: already exists; claims-harness init writes only new files")
    return targets, notes


def main(argv=None, *, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=pathlib.Path, default=pathlib.Path("."),
                        help="the folder to start (default: the current one)")
    args = parser.parse_args(argv)
    try:
        targets, notes = plan(args.folder)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for src, target in targets.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        with importlib.resources.as_file(STARTER / src) as path:
            shutil.copyfile(path, target)
        print(f"wrote {target}")
    for note in notes:
        print(note)
    print("next: pytest --regen-all  (measures every claim, writes evals/baselines/<profile>/; review, commit them)\n"
          "      pytest              (gates: an outcome other than `recorded`, or a figure beyond its drift, fails)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
