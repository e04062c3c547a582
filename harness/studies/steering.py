"""Steering and ablation on contrast pairs: vectors built from pairs, and p(behaviour) of held-out pairs under each
intervention in the letter and cloze readouts (the intervention claims; BRIEF §11).

- **Vectors** (`Vector`, each with where it came from): the CAA vector (mean resid_pre L difference at the answer
  letter's position between the behaviour's and the other completion, over the build pairs: nrimsky/CAA); its k-feature
  SAE reconstruction by gradient pursuit over the decoder rows (micrlhf's ito); the top pursuit feature alone (its
  weight x its decoder row); a named feature's decoder row scaled to the CAA vector's norm (the original's 45142).
- **Readouts** (pair_prompts): letter = softmax over the A/B letter logits after "Answer: ("; cloze = the two answer
  texts' summed log-probs as the reply to the question alone, p = sigmoid(difference). Both at the behaviour's option.
- **One residual per batch**: the plain model runs up to resid_pre L once; every (vector, alpha) continues from it
  (interventions.continue_steered), and the unembedding runs only at the positions read. alpha = 0 is the plain model
  bit for bit, so it is the baseline of every paired effect. Ablation (interventions.Ablate) runs the whole model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from harness.data.pairs import ContrastPair
from harness.errors import InputError
from harness.model import capture, interventions
from harness.model.parallel import batch_multiple
from harness.prompts.formats import letter_probe
from harness.prompts.pair_prompts import PAIR_FORMATS, build_pair_prompts
from harness.runs import batching
from harness.runs.batching import PAD_ID, plan_batches
from harness.runs.packing import Packed, pack_trie, stack_rows
from harness.sae.metrics import cosine_similarity
from harness.sae.pursuit import gradient_pursuit

READOUTS = PAIR_FORMATS
ABLATED = "ablated"  # the key of the ablation run among a plan's runs


@dataclasses.dataclass(frozen=True, kw_only=True)
class Vector:
    """A steering vector at resid_pre `layer` with where it came from (pairs, layer, k, features: into the report)."""

    name: str
    values: np.ndarray  # [d_model] float32
    layer: int
    source: Mapping[str, object]

    @property
    def norm(self) -> float:
        return float(np.linalg.norm(self.values))


# ---------------------------------------------------------------------------------------------------- packed pairs


@dataclasses.dataclass(frozen=True, kw_only=True)
class PackedPair:
    """One pair's sequences of every readout, packed as one trie row (runs.packing), and what is read from it:
    log p(targets[j]) from the logits at row index `at[j]`, summed into (readouts[j], slots[j]) (slot 0 = A, 1 = B).

    letter: the context ending "Answer: (", both letters read at its last token (each letter must be one token
    there); cloze: each answer text after the question alone, its tokens read from their predictors."""

    row: Packed
    at: np.ndarray
    targets: np.ndarray
    readouts: np.ndarray
    slots: np.ndarray


def pack_pair(tokenizer, pair: ContrastPair, readouts: Sequence[str], *, max_len: int) -> PackedPair:
    """The pair's sequences of `readouts` in one trie row, with every token read (PackedPair)."""
    seqs, reads = [], []  # reads: (sequence index, index of the token read, readout, slot, target token)
    for r, readout in enumerate(readouts):
        prompts = build_pair_prompts(tokenizer, pair, readout, max_len=max_len)
        a, b = prompts.options
        if readout == "letter":
            if letter_probe(prompts) is None:
                raise InputError(f"pair {pair.pid}: the letters after 'Answer: (' are not one token each after the "
                                 f"context; the letter readout reads one next-token step")
            seqs.append(a.ids[:-1])
            reads += [(len(seqs) - 1, len(a.ids) - 1, r, slot, o.ids[-1]) for slot, o in enumerate((a, b))]
        else:
            for slot, o in enumerate((a, b)):
                seqs.append(o.ids)
                reads += [(len(seqs) - 1, t, r, slot, o.ids[t]) for t in range(o.cont_start, len(o.ids))]
    row = pack_trie(seqs)
    # the letters' "sequence" is the context alone: token len(context) is predicted by the context's last row
    at = [row.paths[i][t - 1] for i, t, *_ in reads]
    return PackedPair(row=row, at=np.array(at, np.int32), targets=np.array([x[4] for x in reads], np.int32),
                      readouts=np.array([x[2] for x in reads], np.int32), slots=np.array([x[3] for x in reads], np.int32))


def p_behaviour(scores: np.ndarray, pairs: Sequence[ContrastPair]) -> np.ndarray:
    """p(behaviour option) [pair] normalised over the two options, from their summed log-probs [pair, 2]."""
    b = np.array([p.behaviour_index for p in pairs])
    own, other = scores[np.arange(len(pairs)), b], scores[np.arange(len(pairs)), 1 - b]
    return 1.0 / (1.0 + np.exp(other - own))


@jax.jit
def _logprobs(logits, targets):
    """log p(targets) [rows, k] from logits [rows, k, vocabulary]."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


def run_packed_rows(rows: Sequence[Packed], reads: Sequence[tuple[np.ndarray, np.ndarray]], *, forward, take,
                    token_budget: int, label: str, max_shapes: int = 4):
    """batching.run_plan over packed rows: forward(batch) with batch = {members, ids, packing, at, targets, length},
    then take(members, outputs); `reads[i]` = (row indices, token ids) read from row i, padded to a power-of-two k."""
    lengths = [len(r.ids) for r in rows]
    plan = plan_batches(lengths, max_len=max(lengths), batch_size=16, token_budget=token_budget,
                        multiple=batch_multiple(), max_shapes=max_shapes)

    def build(members, n_rows: int, length: int):
        ids, packing = stack_rows([rows[i] for i in members], length, n_rows=n_rows, pad_id=PAD_ID)
        k = 1 << (max(len(reads[i][0]) for i in members) - 1).bit_length()
        at, targets = np.zeros((n_rows, k), np.int32), np.zeros((n_rows, k), np.int32)
        for r, i in enumerate(members):
            at[r, :len(reads[i][0])], targets[r, :len(reads[i][1])] = reads[i]
        return {"members": members, "ids": ids, "packing": packing, "at": at, "targets": targets, "length": length}

    return batching.run_plan(plan, lengths, build=build, forward=forward,
                             take=lambda b, out: take(b["members"], out), label=label)


# ---------------------------------------------------------------------------------------------------- runs


@dataclasses.dataclass(frozen=True, kw_only=True)
class Plan:
    """What to run on held-out pairs: steering by each (vector name, alpha) at resid_pre `layer` (alpha 0 once: the
    plain model) and, if `ablate` names a vector, the model with that direction ablated."""

    layer: int
    steer: tuple[tuple[str, float], ...]
    ablate: str | None = None


def run_plan(model, checkpoint, pairs: Sequence[ContrastPair], plan: Plan, vectors: Mapping[str, Vector], *,
             readouts: Sequence[str] = READOUTS, token_budget: int = 4096) -> dict[str, dict[str, np.ndarray]]:
    """{readout: {run key: p(behaviour) [pair]}} for `plan` on `pairs`; run keys `run_key(name, alpha)` (alpha 0:
    "plain") and ABLATED. A pair's sequences of every readout share one packed row; each batch computes the plain
    residual at resid_pre `plan.layer` once and continues it per (vector, alpha)."""
    max_len = checkpoint.config.max_context
    packed = [pack_pair(checkpoint.tokenizer, p, readouts, max_len=max_len) for p in pairs]
    steers = _distinct(plan.steer)
    keys = [run_key(n, a) for n, a in steers] + ([ABLATED] if plan.ablate else [])
    scores = {key: np.zeros((len(readouts), len(pairs), 2)) for key in keys}
    ablated = None
    if plan.ablate:
        ablated = interventions.intervene(model, interventions.Ablate(direction=vectors[plan.ablate].values))
    zero = np.zeros(checkpoint.config.d_model, np.float32)

    def forward(b):
        ids, packing, at, targets, length = b["ids"], b["packing"], b["at"], jnp.asarray(b["targets"]), b["length"]
        resid = capture.residual(model, ids, layer=plan.layer, where="pre", max_context=length, packing=packing)
        out = {run_key(name, alpha): _logprobs(interventions.continue_steered(
                   model, resid, vector=vectors[name].values if alpha else zero, alpha=alpha, layer=plan.layer,
                   packing=packing, at=at), targets) for name, alpha in steers}
        if ablated is not None:
            out[ABLATED] = _logprobs(capture.residual_and_logits(ablated, ids, layer=0, where="pre", max_context=length,
                                                                 packing=packing, logit_positions=at)[1], targets)
        return out

    def take(members, out) -> None:
        for key, logp in out.items():
            logp = np.asarray(logp)
            for r, i in enumerate(members):
                q = packed[i]
                np.add.at(scores[key], (q.readouts, i, q.slots), logp[r, :len(q.at)])

    run_packed_rows([q.row for q in packed], [(q.at, q.targets) for q in packed], forward=forward, take=take,
                    token_budget=token_budget, label="steering forwards")
    return {ro: {key: p_behaviour(scores[key][r], pairs) for key in keys} for r, ro in enumerate(readouts)}


def run_key(name: str, alpha: float) -> str:
    """The run of vector `name` at `alpha`; every alpha = 0 run is the one plain run."""
    return "plain" if alpha == 0 else f"{name}@{float(alpha):g}"


def _distinct(steer: Sequence[tuple[str, float]]) -> list[tuple[str, float]]:
    seen, out = set(), []
    for name, alpha in [("plain", 0.0), *steer]:
        key = run_key(name, alpha)
        if key not in seen:
            seen.add(key)
            out.append((name, float(alpha)))
    return out


# ---------------------------------------------------------------------------------------------------- vectors


def caa_vector(model, checkpoint, pairs: Sequence[ContrastPair], *, layer: int, token_budget: int = 4096) -> Vector:
    """Mean over `pairs` of resid_pre `layer` at the behaviour letter's position minus at the other letter's (the
    letter prompts, chat template included; a pair's two sequences differ in their last token: one packed row)."""
    max_len = checkpoint.config.max_context
    rows, ends, signs = [], [], []
    for pair in pairs:
        a, b = build_pair_prompts(checkpoint.tokenizer, pair, "letter", max_len=max_len).options
        row = pack_trie([a.ids, b.ids])
        rows.append(row)
        ends.append(np.array([row.paths[0][-1], row.paths[1][-1]], np.int32))
        signs.append(np.where(np.arange(2) == pair.behaviour_index, 1.0, -1.0))
    total = np.zeros(checkpoint.config.d_model, np.float64)

    def forward(b):
        return capture.residual(model, b["ids"], layer=layer, where="pre", max_context=b["length"], packing=b["packing"])

    def take(members, resid) -> None:
        nonlocal total
        resid = np.asarray(resid, np.float64)
        for r, i in enumerate(members):
            total += signs[i] @ resid[r, ends[i]]

    run_packed_rows(rows, [(e, e) for e in ends], forward=forward, take=take, token_budget=token_budget,
                    label="CAA residuals")
    return caa_from_values(total / len(pairs), pairs, layer=layer)


def caa_from_values(values, pairs: Sequence[ContrastPair], *, layer: int) -> Vector:
    """The CAA Vector of `values` (caa_vector's mean, or the same read back from a cache) with its provenance."""
    values = np.asarray(values, np.float32)
    return Vector(name="caa", values=values, layer=layer, source={
        "method": "CAA: mean resid_pre difference at the answer letter (behaviour - other)",
        "pairs": sorted({p.source for p in pairs}), "n_build": len(pairs), "layer": layer,
        "norm": float(np.linalg.norm(values))})


def pursuit_vector(caa: Vector, decoder: np.ndarray, *, k: int, name: str | None = None) -> Vector:
    """The k-step gradient-pursuit reconstruction of `caa` over the SAE decoder rows (k = 1: its top feature alone,
    at the weight that best fits the CAA vector along that row)."""
    fit = gradient_pursuit(caa.values, decoder, k=k)
    weights = {int(i): float(fit.weights[i]) for i in fit.support}
    v = sum(w * np.asarray(decoder[i], np.float64) for i, w in weights.items())
    return Vector(name=name or f"sae-k{k}", values=np.asarray(v, np.float32), layer=caa.layer, source={
        "method": f"gradient pursuit of the CAA vector over the SAE decoder, k = {k}", "layer": caa.layer,
        "n_build": caa.source.get("n_build"), "features": list(weights), "weights": list(weights.values()),
        "cosine_to_caa": _cosine(v, caa.values), "residual_norm_share": fit.residual_norms[-1] / caa.norm})


def feature_vector(caa: Vector, decoder: np.ndarray, feature: int) -> Vector:
    """Feature `feature`'s decoder row scaled to the CAA vector's norm, signed to agree with it."""
    if not 0 <= feature < decoder.shape[0]:
        raise InputError(f"feature {feature}: expected an index in 0..{decoder.shape[0] - 1} of the SAE's decoder")
    row = np.asarray(decoder[feature], np.float64)
    v = row / np.linalg.norm(row) * caa.norm
    if v @ caa.values < 0:
        v = -v
    return Vector(name=f"feature-{feature}", values=v.astype(np.float32), layer=caa.layer, source={
        "method": "decoder row scaled to the CAA vector's norm, signed to agree with it", "features": [feature],
        "layer": caa.layer, "cosine_to_caa": _cosine(v, caa.values)})


def named_vector(name: str, caa: Vector, decoder: np.ndarray) -> Vector:
    """A vector by its registry name: "caa", "sae-k<k>" (pursuit reconstruction), "feature-top" (k = 1) or
    "feature-<index>" (that feature's decoder row); anything else is one InputError line."""
    if name == "caa":
        return caa
    if name == "feature-top":
        return pursuit_vector(caa, decoder, k=1, name=name)
    for prefix, make in (("sae-k", lambda n: pursuit_vector(caa, decoder, k=n)),
                         ("feature-", lambda n: feature_vector(caa, decoder, n))):
        if name.startswith(prefix) and name[len(prefix):].isdigit():
            return make(int(name[len(prefix):]))
    raise InputError(f"steering vector {name!r}: expected 'caa', 'sae-k<k>', 'feature-top' or 'feature-<index>'")


def _cosine(a, b) -> float:
    return cosine_similarity(np.asarray(a)[None], np.asarray(b)[None])


# ---------------------------------------------------------------------------------------------------- effects


@dataclasses.dataclass(frozen=True, kw_only=True)
class Effect:
    """Paired effect of one intervention on p(behaviour) over held-out pairs: p - p(plain) per pair."""

    p: np.ndarray
    plain: np.ndarray
    direction: float  # +1: the intervention should raise p(behaviour), -1 lower it

    @property
    def per_pair(self) -> np.ndarray:
        return self.p - self.plain

    @property
    def wrong_way(self) -> float:
        """Share of pairs whose p moved against `direction` (ties, exactly 0, count neither way)."""
        return float(np.mean(np.sign(self.per_pair) == -np.sign(self.direction)))


def dose_response(runs: Mapping[str, np.ndarray], name: str, alphas: Sequence[float]) -> np.ndarray:
    """[pair, alpha] p(behaviour) of vector `name` over `alphas` (alpha 0: the plain run)."""
    return np.stack([runs[run_key(name, a)] for a in alphas], axis=1)


def rank_correlations(grid: np.ndarray, alphas: Sequence[float]) -> np.ndarray:
    """[pair] Spearman rho of p(behaviour) against alpha, per pair (0 for a pair whose p does not move at all)."""
    import scipy.stats

    return np.array([scipy.stats.spearmanr(alphas, row).statistic if np.ptp(row) > 0 else 0.0 for row in grid])
