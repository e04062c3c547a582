"""Command-line options and hypothesis profiles shared by tests/ and evals/."""

import os

from hypothesis import HealthCheck, settings

settings.register_profile("dev", max_examples=50, deadline=None)
settings.register_profile(
    "ci", max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


def pytest_addoption(parser):
    group = parser.getgroup("claims harness")
    group.addoption("--profile", default="smollm2-default", help="model profile of the claims (smollm2-default, phi3-mini)")
    group.addoption("--model", default=None, help="model: a .gguf file, a Hugging Face directory, or a model id in the local HF cache")
    group.addoption("--sae", default=None, help="SAE: a saex .safetensors file, a SAELens folder, a Gemma Scope params.npz or a harness SAE folder")
    group.addoption("--dataset", default=None, help="comma-separated question sets: mmlu, control, hendrycks:<dir>, truthfulqa")
    group.addoption("--limit", default=None, help="questions per set (a seeded stratified subset); 'all' for the full set")
    group.addoption("--reports-dir", default="reports", help="where the claims report is written")
    group.addoption("--cache-dir", default=".cache/activations", help="the on-disk activation cache")
    group.addoption("--clear-cache", action="store_true", help="empty the activation cache before the run")
