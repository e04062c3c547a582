"""The `claims-harness` command: one subcommand per maintenance job (train the default SAE, check its card, build a
feature dashboard, regenerate the control set, benchmarks). May import any harness package; nothing imports it."""

from __future__ import annotations

import argparse
import importlib
import sys

# command -> (module under harness.cli whose main(argv, prog=...) runs it, one-line help); imported only when chosen,
# so `claims-harness --help` does not load JAX.
COMMANDS = {
    "init": ("init", "start a folder of your own claims: a starter evals/claims.toml, a CI job, pytest's settings"),
    "train-sae": ("train_sae", "regenerate the committed default SAE and its card (slow)"),
    "sae-card": ("sae_card", "recompute the default SAE's card figures and check them against the card"),
    "dashboard": ("dashboard", "build the dashboard page of one or more SAE features"),
    "control-set": ("control_set", "regenerate the control set (harness/data/control_set.jsonl) from fact packages"),
    "bench-forward": ("bench_forward", "forward throughput of each execution form beside transformers"),
    "bench-evaluation": ("bench_evaluation", "where the evaluation path's time goes, per format"),
    "bench-peer": ("bench_peer", "lm-evaluation-harness and this harness on the same MMLU questions"),
    "bench-memory": ("bench_memory", "peak memory of read + build + forward against the weights' bytes, extrapolated"),
}


def main(argv: list[str] | None = None) -> int:
    """Parse the command name, hand the rest of the arguments to that command's own parser; its exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="claims-harness", description="Maintenance jobs of the claims harness.",
                                     epilog="`claims-harness COMMAND --help` shows a command's options.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, summary) in COMMANDS.items():
        commands.add_parser(name, help=summary, add_help=False)
    command = parser.parse_args(argv[:1]).command
    module = importlib.import_module(f"harness.cli.{COMMANDS[command][0]}")
    return module.main(argv[1:], prog=f"claims-harness {command}")
