"""The claims plugin's model-side fixtures: checkpoint, model, SAE, question sets, option runs, activation cache.

Registered by `harness.claims.plugin` (its `pytest_plugins`), so every folder with a claims registry gets them from the
installed package; inputs a profile needs but the user did not give skip with one line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import pathlib

import pytest

from harness.claims.plugin import limit_of, progress_line, run_of
from harness.errors import InputError

# set by `checkpoint` when the run prepends BOS for the SAE (the prompts change, so every cache key must)
BOS_FOR_SAE = pytest.StashKey[bool]()


@contextlib.contextmanager
def users_input(config, option: str):
    """A bad file the user named ends the run at once with one line and exit 4, instead of erroring every test."""
    try:
        yield
    except InputError as e:
        if config.getoption(option) is None:  # the profile's own default: a harness error, shown as such
            raise
        pytest.exit(f"{option}: {e}", returncode=pytest.ExitCode.USAGE_ERROR)


@pytest.fixture(scope="session")
def checkpoint(pytestconfig, profile, provenance, request):
    """The profile's checkpoint. A profile default the user did not give and that is not cached skips (one line).

    With an SAE trained on prompts that began with BOS (SAELens prepend_bos) and a tokenizer that adds none (GPT-2's),
    the tokenizer adds it: every prompt of the run is then the SAE's kind (sae.checkpoint_for_sae; said in provenance).
    """
    from harness.model.sources import read_checkpoint
    from harness.runs.cache import digest_file
    from harness.sae.sae import checkpoint_for_sae

    try:
        with users_input(pytestconfig, "--model"):
            ck = read_checkpoint(profile.model)
    except InputError as e:
        if profile.model is None:
            raise
        pytest.skip(f"{profile.name}: model not given and {profile.model} is not in the local HF cache ({e}); "
                    f"pass --model PATH_OR_ID")
    provenance["model"] = f"{ck.source} (sha256 {digest_file(ck.source)[:16]}…)"
    if profile.sae is not None:  # read after the model, so that a bad model is the error reported first
        adapted, note = checkpoint_for_sae(ck, request.getfixturevalue("sae_file")[1])
        pytestconfig.stash[BOS_FOR_SAE] = adapted is not ck
        if note:
            provenance["sae prepend_bos"] = note
        ck = adapted
    return ck


@pytest.fixture(scope="session")
def model(pytestconfig, profile, checkpoint, provenance):
    """The profile's model as a true scan over the stacked layer axis, sharded over `--mesh` when given."""
    from harness.model import parallel
    from harness.model.forms import Form, build_model

    model = build_model(checkpoint, form=Form.SCAN, dtype=profile.dtype)
    provenance["dtype"] = f"{profile.dtype} parameters, contractions {profile.dtype} x {profile.dtype} -> float32"
    mesh = pytestconfig.getoption("--mesh")
    if mesh is not None:
        mesh = parallel.make_mesh(parallel.parse_mesh(mesh))
        model = parallel.shard_model(model, mesh)
        provenance["mesh"] = parallel.layout(mesh)
    return model


@pytest.fixture(scope="session")
def sae_file(pytestconfig, profile):
    """(SAEParams, SAEMeta) as the profile's SAE file states them, not yet fitted to the model; None without an SAE."""
    from harness.sae.formats import load_any

    if profile.sae is None:
        return None
    # a saex file stores no layer: --sae-layer, else the file's own metadata or name (never the profile's guess)
    with users_input(pytestconfig, "--sae"):
        return load_any(profile.sae, layer=pytestconfig.getoption("--sae-layer"), hook=profile.hook)


@pytest.fixture(scope="session")
def sae(pytestconfig, profile, checkpoint, sae_file, provenance):
    """(SAEParams, SAEMeta) of the profile's SAE, checked against the model's width, layer and hook, and reading the
    model as it read in training (sae.for_model: a centred residual on a LayerNorm model). Its contractions run in the
    profile's dtype (SAEParams.compute_dtype: bf16 x bf16 -> float32 under --dtype bfloat16, weights kept float32);
    every cached SAE output is keyed by that dtype through `cached`'s "dtype" key part."""
    from harness.runs.cache import digest_file
    from harness.sae.sae import check_compatible, for_model

    if profile.sae is None:
        pytest.skip(f"{profile.name}: no SAE given; pass --sae PATH (the original: nev/phi-3-4k-saex-test "
                    f"l20-test-run-5-7.00E-06)")
    params, meta = sae_file
    with users_input(pytestconfig, "--sae"):
        check_compatible(meta, d_model=checkpoint.config.d_model, layer=profile.layer, hook=profile.hook)
    params, centring = for_model(params, meta, norm=checkpoint.config.norm)
    params = dataclasses.replace(params, compute_dtype=profile.dtype)
    provenance["sae"] = (f"{profile.sae} (sha256 {digest_file(profile.sae)[:16]}…; {meta.format} {params.architecture}, "
                         f"{meta.d_sae} features, layer {meta.layer} {meta.hook} — layer from {meta.layer_source})")
    if meta.ignored_fields:
        provenance["sae fields ignored (no effect on the maths)"] = list(meta.ignored_fields)
    if meta.defaulted_fields:
        provenance["sae fields defaulted (absent from the file)"] = list(meta.defaulted_fields)
    if centring:
        provenance["sae input centring"] = centring
    if profile.dtype != "float32":
        provenance["sae dtype"] = (f"float32 weights; encode/decode/reading contractions {profile.dtype} x "
                                   f"{profile.dtype} -> float32, biases and nonlinearity float32")
    return params, meta


@pytest.fixture(scope="session")
def sae_params(sae):
    """The SAE's parameters alone: what the feature measures read."""
    return sae[0]


@pytest.fixture(scope="session")
def question_sets(pytestconfig, profile, provenance):
    """{role: (questions, LoadReport)} of --dataset or the profile's sets; bad rows counted and shown."""
    from harness.data import specs

    raw = pytestconfig.getoption("--dataset") or ",".join(profile.datasets)
    strict = pytestconfig.getoption("--strict-data")
    sets, notes = {}, run_of(pytestconfig).data_notes
    for spec in specs.parse_all(raw):
        with users_input(pytestconfig, "--dataset"):
            questions, load_report = specs.load(spec, seed=profile.seed, strict=strict)
        sets[spec.role] = (questions, load_report)
        provenance.setdefault("question sets", []).append(f"{spec.label}: {load_report.summary()}")
        if load_report.n_bad or load_report.skipped_files:
            notes.append(f"{spec.label}: {load_report.n_bad} bad rows, {len(load_report.skipped_files)} files not read "
                         f"(--strict-data makes these errors); first: " + "; ".join(load_report.examples(5)))
    return sets


@pytest.fixture(scope="session")
def activation_cache(pytestconfig):
    """The on-disk activation cache (--cache-dir; --clear-cache empties it first), keyed by weights and code."""
    from harness.runs.cache import ActivationCache

    cache = ActivationCache(directory=pathlib.Path(pytestconfig.getoption("--cache-dir")))
    if pytestconfig.getoption("--clear-cache"):
        cache.clear()
    yield cache
    progress_line(pytestconfig)(cache.summary(), force=True)


@pytest.fixture(scope="session")
def cached(pytestconfig, profile, checkpoint, activation_cache):
    """cached(name, key_parts, compute, code=()) -> arrays: a deterministic model computation through the on-disk
    cache, keyed by name, the weights digest, code_version(), the digest of the extra harness files `code` and
    key_parts (which must hold everything else the arrays depend on: SAE digest, inputs, layer, hook, seeds)."""
    from harness.runs.cache import code_digest, code_version, digest_file

    base = {"weights": digest_file(checkpoint.source), "code": code_version(), "dtype": profile.dtype}
    if pytestconfig.stash.get(BOS_FOR_SAE, False):  # the prompts begin with BOS for the SAE: not the files' prompts
        base["bos_for_sae"] = True

    def get(name: str, key_parts: dict, compute, *, code: tuple[str, ...] = ()):
        key = {**base, **key_parts, "computation": name, "extra_code": code_digest(*code) if code else ""}
        return activation_cache.get_or_compute(key, compute)

    return get


@pytest.fixture(scope="session")
def option_runs(pytestconfig, profile, checkpoint, model, question_sets, cached):
    """option_runs(role, fmt) -> OptionRun at the profile's layer/hook, once per session and cached on disk.

    Runs are a seeded stratified subset of the profile's budget (or --limit); the formats of a set budgeted at the same
    size share the subset and run together (collect_formats: one trie row per question for all of them).
    """
    from harness.data.subset import stratified_subset
    from harness.prompts.formats import FORMATS, check_format
    from harness.runs.options import collect_formats, from_arrays, to_arrays

    runs = {}
    limit = limit_of(pytestconfig)
    say = progress_line(pytestconfig)

    def run(role: str, fmt: str):
        check_format(fmt)
        if role not in question_sets:
            pytest.skip(f"question set {role!r} not loaded (loaded: {sorted(question_sets)}; see --dataset)")
        if (role, fmt) not in runs:
            questions = question_sets[role][0]
            size = profile.run_size(role, fmt, limit)
            fmts = tuple(f for f in FORMATS if f == fmt or (f"{role}/{f}" in profile.budget
                                                            and profile.run_size(role, f, limit) == size))
            if size is not None and size < len(questions):
                questions, _ = stratified_subset(questions, size, seed=profile.seed)
            # the questions' content, not only their ids: an edited data file misses the cache
            content = json.dumps([(q.qid, q.question, q.choices, q.answer) for q in questions], ensure_ascii=False)
            key = {"set": role, "formats": fmts, "layer": profile.layer, "hook": profile.hook,
                   "questions": hashlib.sha256(content.encode()).hexdigest()}
            label = f"{role} {'+'.join(fmts)}"

            def progress(p):
                say(f"{label}: {p.done}/{p.total} done, {p.tokens_per_s:.0f} tokens/s, {p.seconds:.0f}s")

            def compute():
                got = collect_formats(model, checkpoint, questions, fmts=fmts, layer=profile.layer, hook=profile.hook,
                                      progress=progress)
                return {f"{f}/{name}": a for f, r in got.items() for name, a in to_arrays(r).items()}

            say(f"{label}: {len(questions)} questions …", force=True)
            arrays = cached("option runs", key, compute)
            for f in fmts:
                mine = {name.split("/", 1)[1]: a for name, a in arrays.items() if name.startswith(f"{f}/")}
                runs[(role, f)] = from_arrays(mine, questions, fmt=f, layer=profile.layer, hook=profile.hook)
                run_of(pytestconfig).picks[f"{role}/{f}"] = {"questions": [q.qid for q in runs[(role, f)].questions],
                                                              "picks": runs[(role, f)].picks.tolist()}
                say(f"{role} {runs[(role, f)].summary()}", force=True)
            say(f"{label}: {runs[(role, fmt)].cost()}", force=True)
        return runs[(role, fmt)]

    return run
