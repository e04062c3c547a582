"""Clamp one SAE feature inside the model: an intervention as a model rewrite (harness.model.interventions).

At resid_pre L the residual x is encoded with the SAE, feature j is set to `value`, and decode(clamped) - decode(f) is
added to x, so the SAE's reconstruction error stays in the residual. decode is affine, so that difference is
(value - f_j) W_dec[j] / out_norm_factor, and it is computed so (the mean that `sae.centred` removes cancels in it, as
does b_dec). The layer sits where `interventions.at_resid_pre` puts every resid_pre intervention; in a layer stack it
is a `lax.cond` on a per-layer gate, so the SAE encodes at block L only and the one stacked body stays one.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from penzai import pz
from penzai.models.transformer import model_parts

from harness.errors import InputError
from harness.model import interventions
from harness.model.capture import EMBEDDING
from harness.sae.sae import SAEParams, check_features, encode


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClampFeature:
    """At resid_pre `layer`, set SAE feature `feature` to `value` and add the decoded difference to the residual."""

    sae_params: SAEParams
    feature: int
    value: float
    layer: int

    def rewrite(self, model) -> model_parts.TransformerLM:
        return clamp_feature(model, self)


def clamp_delta(params: SAEParams, x: jax.Array, feature: int, value) -> jax.Array:
    """decode(f with f[feature] = value) - decode(f) for f = encode(x) [..., d_model]: (value - f_j) W_dec[j] / m."""
    f_j = encode(params, x)[..., feature]
    return ((value - f_j)[..., None] * params.W_dec[feature]) / params.out_norm_factor


@pz.pytree_dataclass
class ClampSAEFeature(pz.nn.Layer):
    """x + decode(f clamped) - decode(f) for one SAE feature; inside a layer stack only where `gate` is true."""

    params: SAEParams
    value: jax.Array  # [] float32
    feature: int = dataclasses.field(metadata={"pytree_node": False})
    gate: pz.nx.NamedArray | None = None  # [] bool ([blocks] before a stack slices it)

    def __call__(self, x: pz.nx.NamedArray, **side_inputs) -> pz.nx.NamedArray:
        def clamp(x):
            delta = pz.nx.nmap(lambda v: clamp_delta(self.params, v, self.feature, self.value))(x.untag(EMBEDDING))
            return pz.nx.order_like(x + delta.tag(EMBEDDING), x)

        if self.gate is None:
            return clamp(x)
        return jax.lax.cond(self.gate.unwrap(), clamp, lambda x: x, x)


def clamp_feature(model, spec: ClampFeature) -> model_parts.TransformerLM:
    """`model` with one SAE feature set to spec.value at resid_pre spec.layer, the SAE's error kept."""
    params = spec.sae_params
    d_model = model.metadata.embedding_dim
    if params.d_model != d_model:
        raise InputError(f"SAE width d_model={params.d_model} does not match the model's d_model={d_model}")
    if isinstance(spec.feature, bool) or not isinstance(spec.feature, (int, np.integer)):
        raise InputError(f"feature {spec.feature!r}: expected an integer index")
    feature = int(check_features(params, spec.feature))
    value = jnp.float32(interventions.as_finite(spec.value, "clamp value"))
    return interventions.at_resid_pre(model, spec.layer, lambda gate: ClampSAEFeature(params, value, feature, gate))
