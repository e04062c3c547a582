"""Interventions as model rewrites: steering by a vector and directional ablation (clamping one SAE feature, which
needs the SAE, is harness.sae.clamp's `ClampFeature`, built on `at_resid_pre` here).

Each intervention is a keyword-only spec (`Steer`, `Ablate`, `harness.sae.clamp.ClampFeature`) with a
`rewrite(model)` method; `intervene(model, *specs)` returns the model with a layer of ours inserted by `pz.select` where
the spec acts, in whichever execution form the model is in (harness.model.forms). The rewritten model runs through
harness.model.capture like any other (packed batches included), and reads as it computes:

- **Where "resid_pre L" is.** Steering and clamping act on the residual entering block L. The layer sits at the end
  of what produces that residual: after the embeddings for L = 0 (before the blocks, in every form), else at the end
  of block L - 1 (inside its last residual sub-block, so the block keeps capture's two sub-blocks). So capture's
  resid_pre L of the rewritten model *is* the steered residual, what block L reads (transformers: a forward pre-hook on
  ``model.layers[L]``). One reading changes with it: capture's mlp_out at block L - 1 (its block output minus its
  mid-point) then includes the addition.
- **Stacked forms** (LayerStack, ScanLayerStack): every block of the one stacked body carries the layer, with a
  per-layer constant stacked along the layer axis as blocks.py stacks RoPE frequencies and windows: alpha at layer
  L - 1 and an exact 0.0 elsewhere (Steer), a gate true at layer L - 1 only (ClampFeature: a `lax.cond`, so the SAE
  runs at one layer only). The vector and the SAE weights are held once, shared by every layer.
- **alpha = 0 is the plain model, bit for bit.** x + alpha * v with alpha an exact 0.0 and v finite is x in float32
  (0.0 * v is ±0.0 and x + ±0.0 is x), so no form changes a bit of the logits (tests/test_interventions.py checks
  np.array_equal in all three forms against the unrewritten model).
- **Directional ablation** follows andyrdt/refusal_direction (pipeline/utils/hook_utils.py,
  get_all_direction_ablation_hooks): x - (x·r̂) r̂ on the input of every block and on what each attention and MLP
  sub-block writes to the residual. Here the embeddings (block 0's input) are ablated and every residual sub-block's
  write is ablated where it is added (after any post-norm); a later block's input is then orthogonal to r̂ already, so
  the paper's per-block input hooks would only repeat the projection (float noise apart). The residual is orthogonal
  to r̂ at every layer and position, after the last block included. One difference from that code: on a family with
  post-norms (Gemma 2/3) its hook sits on the attention/MLP module, before the post-norm, so its residual is not
  exactly orthogonal to r̂; here it is.

Interventions live in the model, not in its parameters: `forms.convert` / `split_params` drop them, so convert first,
then intervene. `steer_grid` runs an alpha grid at one layer from one shared residual (it continues the forward with
capture's own block runner, `capture._logits_from`, because `capture.logits_from_residual` takes no packed batch).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from penzai import pz
from penzai.models.transformer import model_parts

from harness.errors import InputError
from harness.model import capture
from harness.model.forms import LAYER_AXIS

EMBEDDING = capture.EMBEDDING


# ---------------------------------------------------------------------------------------------------- the specs


@dataclasses.dataclass(frozen=True, kw_only=True)
class Steer:
    """Add alpha * vector to the residual entering block `layer` (resid_pre), at every position or, with
    `from_position`, at token positions >= from_position (positions from the `token_positions` side input, so a packed
    batch counts each sequence's own positions)."""

    vector: np.ndarray | jax.Array  # [d_model]
    alpha: float
    layer: int
    from_position: int | None = None

    def rewrite(self, model) -> model_parts.TransformerLM:
        return steer(model, self)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Ablate:
    """Project `direction` (normalised here) out of the residual at every layer and position (module docstring)."""

    direction: np.ndarray | jax.Array  # [d_model]

    def rewrite(self, model) -> model_parts.TransformerLM:
        return ablate(model, self)


# ---------------------------------------------------------------------------------------------------- the maths


def steered(x: pz.nx.NamedArray, positions: pz.nx.NamedArray, vector: pz.nx.NamedArray, alpha,
            from_position=None) -> pz.nx.NamedArray:
    """x + alpha * v at every position, or at positions >= from_position only (alpha 0 elsewhere)."""
    if from_position is not None:
        alpha = pz.nx.nmap(jnp.where)(positions >= from_position, alpha, jnp.zeros((), jnp.float32))
    return x + alpha * vector


def projected_out(x: pz.nx.NamedArray, unit: pz.nx.NamedArray) -> pz.nx.NamedArray:
    """x - (x·r̂) r̂ over the embedding axis."""
    along = pz.nx.nmap(jnp.dot)(x.untag(EMBEDDING), unit.untag(EMBEDDING))
    return x - along * unit


# ---------------------------------------------------------------------------------------------------- the layers


@pz.pytree_dataclass
class AddVector(pz.nn.Layer):
    """Steering: x + alpha * vector (from a token position on, if given). `alpha` is [] or, inside a layer stack,
    stacked [blocks] (exact 0.0 at every layer but one)."""

    vector: pz.nx.NamedArray  # [embedding] float32
    alpha: pz.nx.NamedArray  # [] float32 ([blocks] before a stack slices it)
    from_position: pz.nx.NamedArray | None = None  # [] int32

    def __call__(self, x: pz.nx.NamedArray, **side_inputs) -> pz.nx.NamedArray:
        return steered(x, side_inputs["token_positions"], self.vector, self.alpha, self.from_position)


@pz.pytree_dataclass
class ProjectOut(pz.nn.Layer):
    """Directional ablation: x - (x·r̂) r̂."""

    unit: pz.nx.NamedArray  # [embedding] float32, norm 1

    def __call__(self, x: pz.nx.NamedArray, **side_inputs) -> pz.nx.NamedArray:
        return projected_out(x, self.unit)


# ---------------------------------------------------------------------------------------------------- placement


def _block_indices(model: model_parts.TransformerLM) -> list[int]:
    """Indices in model.body.sublayers of the blocks (or of the one layer stack)."""
    return [i for i, layer in enumerate(model.body.sublayers)
            if isinstance(layer, (model_parts.TransformerBlock, pz.nn.LayerStack))]


def _is_stacked(model) -> bool:
    return any(isinstance(layer, pz.nn.LayerStack) for layer in model.body.sublayers)


def check_layer(model, layer: int) -> int:
    """`layer` as an int if the model has a block of that index, else a one-line InputError."""
    n = capture.n_layers(model)
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer < n:
        raise InputError(f"intervention layer {layer!r} out of range: the model has blocks 0..{n - 1}")
    return int(layer)


def _append_to_block(block: model_parts.TransformerBlock, layer: pz.nn.Layer) -> model_parts.TransformerBlock:
    """The block with `layer` run after its last residual sub-block, inside it (the block keeps its sub-blocks)."""
    *first, last = block.sublayers
    return dataclasses.replace(block, sublayers=[*first, pz.nn.Sequential([last, layer])])


def at_resid_pre(model, layer: int, make) -> model_parts.TransformerLM:
    """`model` with the layer make(gate) acting on the residual entering block `layer`: before the blocks for layer 0,
    else at the end of block layer - 1 (module docstring). `gate` is None where the layer is inserted once (unrolled
    form, or layer 0), else a [blocks] bool constant true at block layer - 1 only: the layer rides in every block of the
    stack and must act there alone."""
    layer = check_layer(model, layer)
    if layer == 0:
        first = _block_indices(model)[0]
        return pz.select(model).at(lambda m: m.body.sublayers[first]).insert_before(make(None))
    blocks = pz.select(model).at_instances_of(model_parts.TransformerBlock)
    if not _is_stacked(model):
        return blocks.pick_nth_selected(layer - 1).apply(lambda b: _append_to_block(b, make(None)))
    n = capture.n_layers(model)
    gate = pz.nx.wrap(jnp.arange(n) == layer - 1).tag(LAYER_AXIS)
    return blocks.apply(lambda b: _append_to_block(b, make(gate)))


def as_vector(v, d_model: int, what: str) -> jax.Array:
    """`v` as a finite float32 [d_model] array, else a one-line InputError naming `what`."""
    v = np.asarray(v, np.float32)
    if v.shape != (d_model,):
        raise InputError(f"{what}: shape {v.shape}, expected [d_model={d_model}]")
    if not np.isfinite(v).all():
        raise InputError(f"{what}: {int((~np.isfinite(v)).sum())} NaN/inf values, expected all finite")
    return jnp.asarray(v)


def _position(p) -> int | None:
    if p is None:
        return None
    if isinstance(p, bool) or not isinstance(p, (int, np.integer)) or p < 0:
        raise InputError(f"from_position={p!r}: expected a token position >= 0 or None")
    return int(p)


def as_finite(x, what: str) -> float:
    """`x` as a finite float, else a one-line InputError."""
    x = float(x)
    if not np.isfinite(x):
        raise InputError(f"{what}={x}: expected a finite number")
    return x


def steer(model, spec: Steer) -> model_parts.TransformerLM:
    """`model` adding spec.alpha * spec.vector to the residual entering block spec.layer (module docstring)."""
    v = pz.nx.wrap(as_vector(spec.vector, model.metadata.embedding_dim, "steering vector")).tag(EMBEDDING)
    alpha = jnp.float32(as_finite(spec.alpha, "alpha"))
    position = _position(spec.from_position)
    start = None if position is None else pz.nx.wrap(jnp.int32(position))

    def make(gate):
        if gate is None:
            return AddVector(v, pz.nx.wrap(alpha), start)
        return AddVector(v, pz.nx.nmap(jnp.where)(gate, alpha, jnp.float32(0.0)), start)

    return at_resid_pre(model, spec.layer, make)


def ablate(model, spec: Ablate) -> model_parts.TransformerLM:
    """`model` with spec.direction projected out of the embeddings and out of every sub-block's write to the residual,
    so the residual is orthogonal to it at every layer and position (module docstring)."""
    r = np.asarray(as_vector(spec.direction, model.metadata.embedding_dim, "ablation direction"), np.float64)
    norm = np.linalg.norm(r)
    if not norm > 0:
        raise InputError("ablation direction: the zero vector has no direction to project out")
    unit = pz.nx.wrap(jnp.asarray(r / norm, jnp.float32)).tag(EMBEDDING)
    model = (pz.select(model).at_instances_of(model_parts.TransformerBlock).at_instances_of(pz.nn.Residual)
             .apply(lambda res: dataclasses.replace(res, delta=pz.nn.Sequential([res.delta, ProjectOut(unit)]))))
    first = _block_indices(model)[0]
    return pz.select(model).at(lambda m: m.body.sublayers[first]).insert_before(ProjectOut(unit))


def intervene(model, *specs) -> model_parts.TransformerLM:
    """`model` with each intervention (Steer, Ablate, harness.sae.clamp.ClampFeature: a spec with a `rewrite(model)`
    method) applied in turn; the model keeps its execution form."""
    for spec in specs:
        if not callable(getattr(spec, "rewrite", None)):
            raise InputError(f"intervention {spec!r}: expected a spec with a rewrite(model) method (Steer, Ablate, "
                             "ClampFeature)")
        model = spec.rewrite(model)
    return model


# ---------------------------------------------------------------------------------------------------- alpha grid


@dataclasses.dataclass(frozen=True, kw_only=True)
class SteerGrid:
    """Logits per alpha of a steering grid at one layer, and what it cost in blocks run.

    `forwards` = (L + G (N - L)) / N full-forward equivalents (the shared residual up to L once, then the N - L later
    blocks per alpha), at most the issue's 1 + G (N - L) / N; G separate steered runs cost G (`separate_forwards`).
    Block counts leave out the embedding and unembedding.
    """

    alphas: tuple[float, ...]
    logits: tuple[jax.Array, ...]  # one [batch, seq, vocabulary] per alpha
    layer: int
    n_layers: int

    @property
    def blocks_run(self) -> int:
        return self.layer + len(self.alphas) * (self.n_layers - self.layer)

    @property
    def forwards(self) -> float:
        return self.blocks_run / self.n_layers

    @property
    def separate_forwards(self) -> int:
        return len(self.alphas)


@functools.partial(jax.jit, static_argnames=("start",), compiler_options=capture.JIT_OPTIONS)
def _continue_steered(model, resid, vector, alpha, from_position, packing, start, at=None):
    side = capture._side_inputs(resid, packing)  # plain positions 0.. or the packed batch's own side inputs
    x = pz.nx.wrap(resid).tag(capture.BATCH, capture.SEQ, EMBEDDING)
    x = steered(x, side["token_positions"], pz.nx.wrap(vector).tag(EMBEDDING), pz.nx.wrap(alpha),
                None if from_position is None else pz.nx.wrap(from_position))
    if at is not None:
        at = pz.nx.wrap(at).tag(capture.BATCH, capture.SEQ)
    return capture._logits_from(model, x, start, side, at).unwrap(capture.BATCH, capture.SEQ, capture.VOCAB)


def continue_steered(model, resid, *, vector, alpha: float, layer: int, from_position: int | None = None,
                     packing=None, at=None) -> jax.Array:
    """Logits of `model` steered by alpha * vector at resid_pre `layer`, continued from `resid` (capture.residual of
    the plain model at that layer): [batch, seq, vocabulary], or [batch, k, vocabulary] at positions `at` [batch, k]
    only (the unembedding runs there alone). What `intervene(model, Steer(...))` computes, from the shared residual."""
    layer = check_layer(model, layer)
    v = as_vector(vector, model.metadata.embedding_dim, "steering vector")
    position = _position(from_position)
    start = None if position is None else jnp.int32(position)
    if at is not None:
        at = jnp.asarray(capture.check_positions(at, resid.shape, "at"), jnp.int32)
    return _continue_steered(pz.freeze_params(model), resid, v, jnp.float32(as_finite(alpha, "alpha")), start,
                             capture._packing(np.broadcast_to(0, resid.shape[:2]), packing), layer, at)


def steer_grid(model, tokens, *, vector, alphas: Sequence[float], layer: int, max_context: int,
               from_position: int | None = None, packing=None) -> SteerGrid:
    """Logits of `model` steered by each alpha * vector at resid_pre `layer`: the residual up to `layer` is computed
    once (capture.residual) and each alpha adds its vector there and runs the remaining blocks — what
    `intervene(model, Steer(...))` computes for that alpha, at (L + G (N - L)) / N forwards instead of G.

    `packing` as in capture.logits; `from_position` as in Steer (positions from the packed batch's side input).
    """
    layer = check_layer(model, layer)
    alphas = tuple(as_finite(a, "alpha") for a in alphas)
    if not alphas:
        raise InputError("steer_grid: expected at least one alpha")
    tokens = np.asarray(tokens)
    resid = capture.residual(model, tokens, layer=layer, where="pre", max_context=max_context, packing=packing)
    logits = tuple(continue_steered(model, resid, vector=vector, alpha=a, layer=layer, from_position=from_position,
                                    packing=packing) for a in alphas)
    return SteerGrid(alphas=alphas, logits=logits, layer=layer, n_layers=capture.n_layers(model))
