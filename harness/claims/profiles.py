"""Model profiles as data: which model, SAE, layer, question sets and run budget a claims run uses.

Profiles are `[[profile]]` tables: the built-in ones in the package's resources/profiles.toml (`smollm2-default`,
offline on every fresh machine; `phi3-mini`, the original work's setup) and a user's own in the claims registry.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import pathlib
from typing import Annotated, Literal, Mapping

from pydantic import ConfigDict, Field, field_validator

from harness.errors import InputError
from harness.model.config import DTYPES
from harness.validation import NonNegativeInt, PositiveInt, Schema, StrictStr, read_toml, validate

RESOURCES = pathlib.Path(str(importlib.resources.files("harness.claims") / "resources"))  # installed unzipped
BUILTIN = RESOURCES / "profiles.toml"


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
    chat_family: str = ""
    datasets: tuple[str, ...]
    budget: Mapping[str, int] = dataclasses.field(default_factory=dict)
    seed: int = 0
    dtype: str = "float32"  # the parameters' dtype (one of DTYPES); float32 is exact against transformers
    description: str = ""
    source: str = ""  # the file whose [[profile]] table defined it

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise InputError(f"profile {self.name}: dtype {self.dtype!r}, expected one of {list(DTYPES)}")

    @property
    def label(self) -> str:
        """Where its baselines and report live: the name, plus the dtype when it is not float32 (figures differ)."""
        return self.name if self.dtype == "float32" else f"{self.name}-{self.dtype}"

    @property
    def builtin(self) -> bool:
        return self.source == str(BUILTIN)

    def run_size(self, role: str, fmt: str, limit: int | None | str = "profile") -> int | None:
        """Questions to run for (role, fmt): --limit when given (None = all), else the profile's budget."""
        if limit != "profile":
            return limit
        return self.budget.get(f"{role}/{fmt}")


class ProfileTable(Schema):
    """One [[profile]] table as written: strict types, every field known, datasets and budget keys well-formed."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)
    name: Annotated[str, Field(strict=True, min_length=1)]
    model: StrictStr | None = None
    sae: StrictStr | None = None
    layer: NonNegativeInt
    hook: StrictStr = "resid_pre"
    dtype: Literal[DTYPES] = "float32"
    chat_family: StrictStr = ""
    datasets: Annotated[list[StrictStr], Field(min_length=1)]
    budget: dict[str, PositiveInt] = {}
    seed: NonNegativeInt = 0
    description: StrictStr = ""

    @field_validator("hook")
    @classmethod
    def _known_hook(cls, hook: str) -> str:
        from harness.runs.options import HOOKS

        if hook not in HOOKS:
            raise ValueError(f"expected one of {tuple(HOOKS)}")
        return hook

    @field_validator("datasets")
    @classmethod
    def _dataset_specs(cls, datasets: list[str]) -> list[str]:
        from harness.data import specs

        try:
            specs.parse_all(",".join(datasets))
        except InputError as e:
            raise ValueError(str(e)) from None
        return datasets

    @field_validator("budget")
    @classmethod
    def _budget_keys(cls, budget: dict[str, int]) -> dict[str, int]:
        from harness.data.specs import ROLES
        from harness.prompts.formats import FORMATS

        for key in budget:
            role, _, fmt = key.partition("/")
            if role not in ROLES or fmt not in FORMATS:
                raise ValueError(f"key {key!r}: expected 'role/format', role one of {ROLES}, format one of {FORMATS}")
        return budget


def _beside(folder: pathlib.Path, path: str) -> str:
    """A path as written in a profile: absolute, or relative to the folder of the file that names it."""
    p = pathlib.Path(path).expanduser()
    return str(p if p.is_absolute() else folder / p)


def _dataset_beside(folder: pathlib.Path, entry: str) -> str:
    """A --dataset entry whose file or folder (if it names one) is resolved against `folder`."""
    from harness.data import specs

    spec = specs.parse(entry)
    if spec.path is None:
        return entry
    head = f"{spec.kind}:"
    return head + _beside(folder, spec.path) + entry.strip()[len(head) + len(spec.path):]


def profiles_in(path: pathlib.Path) -> dict[str, Profile]:
    """The checked [[profile]] tables of a TOML file, by name; model, SAE and data paths resolved against its folder
    (a model that is no path there stays an id for the local Hugging Face cache)."""
    raw = read_toml(path, expected="a TOML file of [[profile]] tables")
    tables = raw.get("profile", [])
    if not isinstance(tables, list):
        raise InputError(f"{path}: 'profile' must be [[profile]] tables, got {type(tables).__name__}")
    out: dict[str, Profile] = {}
    for i, table in enumerate(tables):
        name = table.get("name", "?") if isinstance(table, dict) else "?"
        t = validate(ProfileTable, table, f"{path}: profile #{i + 1} ({name})")
        if t.name in out:
            raise InputError(f"{path}: profile {t.name!r} appears more than once")
        folder = path.parent
        model = t.model if t.model is None or not (folder / t.model).exists() else _beside(folder, t.model)
        out[t.name] = Profile(
            name=t.name, model=model, sae=None if t.sae is None else _beside(folder, t.sae), layer=t.layer,
            hook=t.hook, chat_family=t.chat_family, datasets=tuple(_dataset_beside(folder, d) for d in t.datasets),
            budget=dict(t.budget), seed=t.seed, dtype=t.dtype, description=t.description, source=str(path))
    return out


PROFILES: dict[str, Profile] = profiles_in(BUILTIN)
DEFAULT_SAE_DIR = pathlib.Path(PROFILES["smollm2-default"].sae)


def known_profiles(registry: pathlib.Path) -> dict[str, Profile]:
    """The built-in profiles and those of the claims registry (if it exists); a name defined twice is an error."""
    own = profiles_in(registry) if registry.is_file() else {}
    clash = sorted(set(own) & set(PROFILES))
    if clash:
        raise InputError(f"{registry}: profile {clash[0]!r} is a built-in profile ({BUILTIN}); give yours another name")
    return {**PROFILES, **own}


def describe(profiles: Mapping[str, Profile]) -> str:
    """'a (built-in), b (evals/claims.toml)': every profile found and where it came from."""
    return ", ".join(f"{p.name} ({'built-in' if p.builtin else p.source})" for p in profiles.values())


def get_profile(name: str, known: Mapping[str, Profile] | None = None, **overrides) -> Profile:
    """A profile of `known` (default: the built-in ones) with command-line overrides (None values are ignored)."""
    known = PROFILES if known is None else known
    if name not in known:
        raise InputError(f"--profile {name!r}: expected one of {describe(known)}")
    return dataclasses.replace(known[name], **{k: v for k, v in overrides.items() if v is not None})


def check_files(profile: Profile) -> None:
    """The model, SAE and data files a user's own profile names exist (one InputError line naming the field)."""
    from harness.data import specs
    from harness.model.sources import locate_checkpoint

    where = f"{profile.source}: profile {profile.name}"
    if profile.model is not None:
        try:
            found = locate_checkpoint(profile.model).exists()
        except InputError as e:  # an id not in the local cache, or neither a path nor an id
            raise InputError(f"{where}: field model: {e}") from None
        if not found:
            raise InputError(f"{where}: field model = {profile.model!r}: no such file or folder")
    if profile.sae is not None and not pathlib.Path(profile.sae).exists():
        raise InputError(f"{where}: field sae = {profile.sae!r}: no such file or folder")
    for spec in specs.parse_all(",".join(profile.datasets)):
        if spec.path is not None and not pathlib.Path(spec.path).exists():
            raise InputError(f"{where}: field datasets: {spec.kind}:{spec.path}: no such file or folder")
