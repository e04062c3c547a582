"""penzai's layers rewritten (`pz.select`) so that XLA:CPU reaches its bf16 matrix units and copies no weight.

penzai 0.2.5 contracts with `nmap(jnp.tensordot)` / `nmap(jnp.einsum)` and offers no `preferred_element_type`: XLA:CPU
upcasts a bf16 x bf16 -> bf16 dot to float32 (slower than float32 itself), while bf16 x bf16 -> float32 reaches the
bf16 matrix units (BRIEF §10); and the vmapped contractions and the embedding lookup make XLA transpose whole weight
matrices on every forward. These layers cast both operands to `compute_dtype`, ask for a float32 result (the residual
stream, norms and softmax stay float32), and contract each weight in its stored [out, in] layout as one 2-d dot.
With float32 they compute what penzai's own layers compute.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from penzai import pz

ACCUMULATE = jnp.float32


def _dtype_field():
    return dataclasses.field(default=jnp.float32, metadata={"pytree_node": False})


@pz.pytree_dataclass(has_implicitly_inherited_fields=True)  # penzai's Linear fields, plus the compute dtype
class LinearAccumulateF32(pz.nn.Linear):
    """`pz.nn.Linear` as one [tokens, in] x [out, in] dot in `compute_dtype` with a float32 result.

    The weight's named axes are its output axes then its input axes, in data order (as the builder stores them), so
    flattening it is free and the dot reads it where it lies.
    """

    compute_dtype: jax.typing.DTypeLike = _dtype_field()

    def __call__(self, in_array: pz.nx.NamedArray, **_unused_side_inputs) -> pz.nx.NamedArray:
        weights = self.weights.value
        outs, ins = self.out_axis_names, self.in_axis_names
        if set(weights.named_shape) != {*outs, *ins}:
            raise ValueError(f"{type(self).__name__}: weight axes {dict(weights.named_shape)} are not exactly the "
                             f"output axes {outs} and input axes {ins}")
        batch = tuple(name for name in in_array.named_shape if name not in ins)
        n_in = math.prod(weights.named_shape[name] for name in ins)
        out_sizes = tuple(weights.named_shape[name] for name in outs)
        x = in_array.unwrap(*batch, *ins)
        x = x.reshape(*x.shape[: len(batch)], n_in).astype(self.compute_dtype)
        w = weights.unwrap(*outs, *ins).reshape(math.prod(out_sizes), n_in).astype(self.compute_dtype)
        y = jax.lax.dot_general(x, w, (((x.ndim - 1,), (1,)), ((), ())), preferred_element_type=ACCUMULATE)
        return pz.nx.wrap(y.reshape(*y.shape[:-1], *out_sizes)).tag(*batch, *outs)


@pz.pytree_dataclass(has_implicitly_inherited_fields=True)  # penzai's NamedEinsum fields, plus the compute dtype
class EinsumAccumulateF32(pz.nn.NamedEinsum):
    """`pz.nn.NamedEinsum` (attention scores and values) in `compute_dtype` with a float32 result.

    The body is penzai 0.2.5's NamedEinsum.__call__ with the operands cast and `preferred_element_type` passed.
    """

    compute_dtype: jax.typing.DTypeLike = _dtype_field()

    def __call__(self, arrays: tuple[pz.nx.NamedArray, ...], **_unused_side_inputs) -> pz.nx.NamedArray:
        einsum_args = []
        for arr, spec in zip(arrays, self.input_axes):
            to_sum = {ax: ax for ax in spec} if isinstance(spec, tuple) else spec
            ordering = [name for name in arr.named_shape if name in to_sum]
            einsum_args += [arr.astype(self.compute_dtype).untag(*ordering), [to_sum[name] for name in ordering]]
        out = {ax: ax for ax in self.output_axes} if isinstance(self.output_axes, tuple) else self.output_axes
        einsum_args.append(list(out.values()))
        einsum = functools.partial(jnp.einsum, preferred_element_type=ACCUMULATE)
        return pz.nx.nmap(einsum)(*einsum_args).tag(*out.keys())


@pz.pytree_dataclass(has_implicitly_inherited_fields=True)  # penzai's EmbeddingLookup fields
class EmbeddingRows(pz.nn.EmbeddingLookup):
    """`pz.nn.EmbeddingLookup` as a gather of table rows: penzai's vmapped lookup transposes the whole table first."""

    def __call__(self, token_index: pz.nx.NamedArray, **_unused_side_inputs) -> pz.nx.NamedArray:
        table = self.table.embeddings.value
        rest = tuple(name for name in table.named_shape if name != self.table.vocabulary_axis)
        rows = table.unwrap(self.table.vocabulary_axis, *rest)
        return pz.nx.nmap(lambda ids: jnp.take(rows, ids, axis=0))(token_index).tag(*rest)


def rewrite_layers(model, compute_dtype):
    """`model` with every dense Linear, attention einsum and embedding lookup swapped for the layers above.

    Elementwise "linears" (the norms' scales: no contracted axis) stay penzai's own.
    """
    model = (
        pz.select(model)
        .at_instances_of(pz.nn.Linear)
        .where(lambda layer: bool(layer.in_axis_names) and not isinstance(layer, LinearAccumulateF32))
        .apply(lambda layer: LinearAccumulateF32(layer.weights, layer.in_axis_names, layer.out_axis_names,
                                                 compute_dtype=compute_dtype))
    )
    model = (
        pz.select(model)
        .at_instances_of(pz.nn.NamedEinsum)
        .where(lambda layer: not isinstance(layer, EinsumAccumulateF32))
        .apply(lambda layer: EinsumAccumulateF32(layer.input_axes, layer.output_axes, compute_dtype=compute_dtype))
    )
    return (
        pz.select(model)
        .at_instances_of(pz.nn.EmbeddingLookup)
        .where(lambda layer: not isinstance(layer, EmbeddingRows))
        .apply(lambda layer: EmbeddingRows(layer.table))
    )
