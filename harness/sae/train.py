"""Train a TopK (default) or L1-ReLU SAE with JAX + optax on a stream of activation batches.

Recipe (after EleutherAI sparsify / OpenAI TopK): inputs rescaled so their mean norm is
sqrt(d_model) (folded into the saved params as norm_factor), b_dec initialised to the data mean
or geometric median and subtracted from the input, W_enc tied to W_dec at start, decoder rows kept
at unit norm after every Adam step, reconstruction loss = batch FVU, and for TopK an AuxK loss that
lets latents dead for ``dead_after_tokens`` tokens learn to explain the residual error.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterable, Iterator
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from harness.errors import InputError
from harness.sae.sae import SAEParams, decode, encode, pre_activations, scatter_last_axis


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything that decides a training run; two runs with equal configs and data give equal SAEs.

    ``l1_coefficient`` (relu only) multiplies E Σ|f_i| / sqrt(d_model) on the rescaled inputs.
    ``aux_k`` defaults to min(d_model // 2, d_sae); ``aux_k_coefficient = 0`` turns AuxK off.
    """

    d_sae: int
    steps: int
    architecture: Literal["topk", "relu"] = "topk"
    k: int = 32
    l1_coefficient: float = 0.3
    lr: float = 1e-3
    batch_size: int = 4096
    seed: int = 0
    normalize_input: bool = True
    normalize_decoder: bool = True
    b_dec_init: Literal["mean", "geometric_median", "zeros"] = "geometric_median"
    aux_k: int | None = None
    aux_k_coefficient: float = 1.0 / 32
    dead_after_tokens: int = 1_000_000
    log_every: int = 50
    progress: bool = True

    def __post_init__(self):
        positive = dict(d_sae=self.d_sae, steps=self.steps, batch_size=self.batch_size, lr=self.lr,
                        log_every=self.log_every, dead_after_tokens=self.dead_after_tokens)
        for name, value in positive.items():
            if not value > 0:
                raise InputError(f"TrainConfig.{name}={value}, expected > 0")
        if self.architecture not in ("topk", "relu"):
            raise InputError(f"TrainConfig.architecture={self.architecture!r}, expected 'topk' or 'relu'")
        if self.architecture == "topk" and not 0 < self.k <= self.d_sae:
            raise InputError(f"TrainConfig.k={self.k}, expected 1..d_sae={self.d_sae}")
        if self.b_dec_init not in ("mean", "geometric_median", "zeros"):
            raise InputError(f"TrainConfig.b_dec_init={self.b_dec_init!r}, expected mean, geometric_median or zeros")
        if self.l1_coefficient < 0 or self.aux_k_coefficient < 0:
            raise InputError("TrainConfig.l1_coefficient and aux_k_coefficient: expected >= 0")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainLog:
    """What happened in a run: logged curves (step 1, every ``log_every`` steps, the last) and the totals."""

    step: tuple[int, ...]
    loss: tuple[float, ...]
    fvu: tuple[float, ...]
    l0: tuple[float, ...]
    dead_fraction: tuple[float, ...]
    n_tokens: int
    n_rows_unused: int  # rows read from the stream but left over after the last full batch
    norm_factor: float
    seconds: float


def drop_outlier_tokens(x, *, factor: float = 10.0) -> tuple[np.ndarray, int]:
    """Drop rows of x [token, d_model] whose norm exceeds ``factor`` × the median norm (BOS/sink tokens).

    Returns the kept rows and how many were dropped, so the caller can report the count.
    """
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0:
        raise InputError(f"x: shape {x.shape}, expected [token, d_model] with at least one token")
    if not factor > 1:
        raise InputError(f"drop_outlier_tokens factor={factor}, expected > 1")
    norms = np.linalg.norm(x.astype(np.float64), axis=1)
    keep = norms <= factor * np.median(norms)
    return x[keep], int((~keep).sum())


def geometric_median(x: np.ndarray, *, iterations: int = 50, eps: float = 1e-8) -> np.ndarray:
    """Weiszfeld's iteration for the point minimising the summed distance to the rows of x."""
    x = np.asarray(x, dtype=np.float64)
    point = x.mean(axis=0)
    for _ in range(iterations):
        weights = 1.0 / np.maximum(np.linalg.norm(x - point, axis=1), eps)
        new = (weights[:, None] * x).sum(axis=0) / weights.sum()
        if np.linalg.norm(new - point) < eps * (1 + np.linalg.norm(point)):
            return new
        point = new
    return point


def _fixed_batches(batches: Iterable[np.ndarray], *, size: int, d_model: int, counter: dict) -> Iterator[np.ndarray]:
    """Re-cut a stream of [n, d_model] arrays into [size, d_model] batches; leftover rows stay in ``counter``."""
    buffer: list[np.ndarray] = []
    held = 0
    for i, batch in enumerate(batches):
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim != 2 or batch.shape[1] != d_model:
            raise InputError(f"training batch {i}: shape {batch.shape}, expected [n, d_model={d_model}]")
        if not np.isfinite(batch).all():
            raise InputError(f"training batch {i}: {int((~np.isfinite(batch)).sum())} NaN/inf values, expected all finite")
        buffer.append(batch)
        held += batch.shape[0]
        counter["held"] = held
        while held >= size:
            joined = np.concatenate(buffer)
            yield joined[:size]
            buffer, held = [joined[size:]], held - size
            counter["held"] = held


def _init_params(config: TrainConfig, d_model: int, b_dec: np.ndarray) -> dict[str, jax.Array]:
    """Unit-norm random decoder rows, encoder tied to the decoder, zero encoder bias."""
    key = jax.random.key(config.seed)
    W_dec = jax.random.normal(key, (config.d_sae, d_model), dtype=jnp.float32)
    W_dec = W_dec / jnp.linalg.norm(W_dec, axis=1, keepdims=True)
    return dict(W_enc=W_dec.T, b_enc=jnp.zeros(config.d_sae, jnp.float32), W_dec=W_dec,
                b_dec=jnp.asarray(b_dec, jnp.float32))


def _as_params(trainable: dict[str, jax.Array], config: TrainConfig) -> SAEParams:
    return SAEParams(**trainable, architecture=config.architecture,
                     k=config.k if config.architecture == "topk" else None, apply_b_dec_to_input=True)


def _make_step(config: TrainConfig, d_model: int, optimizer: optax.GradientTransformation):
    """A jit-compiled training step over (trainable params, optimizer state, tokens since each latent fired)."""
    aux_k = min(config.aux_k or d_model // 2, config.d_sae)

    def loss_fn(trainable, x, dead):
        params = _as_params(trainable, config)
        f = encode(params, x)
        x_hat = decode(params, f)
        variance = jnp.sum((x - x.mean(axis=0)) ** 2)
        fvu = jnp.sum((x - x_hat) ** 2) / variance
        loss = fvu
        if config.architecture == "relu":
            l1 = jnp.sum(jnp.abs(f) * jnp.linalg.norm(params.W_dec, axis=1)) / x.shape[0]
            loss = loss + config.l1_coefficient * l1 / math.sqrt(d_model)
        elif config.aux_k_coefficient > 0:
            pre = pre_activations(params, x)
            masked = jnp.where(dead, pre, -jnp.inf)
            values, idx = jax.lax.top_k(masked, aux_k)
            f_aux = scatter_last_axis(pre.shape, idx, jnp.where(jnp.isfinite(values), jax.nn.relu(values), 0.0))
            error = jax.lax.stop_gradient(x - x_hat)
            error_hat = f_aux @ params.W_dec
            aux = jnp.sum((error - error_hat) ** 2) / jnp.maximum(jnp.sum((error - error.mean(axis=0)) ** 2), 1e-12)
            n_dead = jnp.sum(dead)
            scale = jnp.minimum(n_dead / aux_k, 1.0)
            loss = loss + jnp.where(n_dead > 0, config.aux_k_coefficient * scale * aux, 0.0)
        return loss, (fvu, f)

    @jax.jit
    def step(trainable, opt_state, since_fired, x):
        dead = since_fired > config.dead_after_tokens
        (loss, (fvu, f)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable, x, dead)
        updates, opt_state = optimizer.update(grads, opt_state, trainable)
        trainable = optax.apply_updates(trainable, updates)
        if config.normalize_decoder:
            W_dec = trainable["W_dec"]
            trainable = {**trainable, "W_dec": W_dec / jnp.maximum(jnp.linalg.norm(W_dec, axis=1, keepdims=True), 1e-8)}
        fired = jnp.any(f != 0, axis=0)
        since_fired = jnp.where(fired, 0, since_fired + x.shape[0])
        l0 = jnp.mean(jnp.sum(f != 0, axis=1))
        return trainable, opt_state, since_fired, dict(loss=loss, fvu=fvu, l0=l0, dead=jnp.mean(dead))

    return step


def train_sae(batches: Iterable[np.ndarray], config: TrainConfig, *, d_model: int) -> tuple[SAEParams, TrainLog]:
    """Train an SAE on ``config.steps`` batches of ``config.batch_size`` rows cut from ``batches`` ([n, d_model] each).

    Excluding BOS/attention-sink outliers is the caller's job (see ``drop_outlier_tokens``). The
    stream must hold enough rows: running out before ``config.steps`` is an InputError, not a short run.
    """
    started = time.perf_counter()
    counter = {"held": 0}
    stream = _fixed_batches(batches, size=config.batch_size, d_model=d_model, counter=counter)
    first = next(stream, None)
    if first is None:
        raise InputError(f"training batches: fewer than batch_size={config.batch_size} rows in the whole stream")
    norm_factor = 1.0
    if config.normalize_input:
        norm_factor = math.sqrt(d_model) / float(np.linalg.norm(first.astype(np.float64), axis=1).mean())
    scaled = first * norm_factor
    b_dec = {"mean": lambda: scaled.mean(axis=0), "zeros": lambda: np.zeros(d_model),
             "geometric_median": lambda: geometric_median(scaled)}[config.b_dec_init]()
    trainable = _init_params(config, d_model, b_dec)
    optimizer = optax.adam(config.lr)
    opt_state = optimizer.init(trainable)
    since_fired = jnp.zeros(config.d_sae, jnp.int32)
    step_fn = _make_step(config, d_model, optimizer)
    log: dict[str, list] = {"step": [], "loss": [], "fvu": [], "l0": [], "dead_fraction": []}
    batch = first
    with tqdm(total=config.steps, desc="train SAE", disable=not config.progress) as bar:
        for step in range(1, config.steps + 1):
            if step > 1:
                batch = next(stream, None)
                if batch is None:
                    raise InputError(f"training batches ran out after {step - 1} steps, expected TrainConfig.steps={config.steps}")
            trainable, opt_state, since_fired, stats = step_fn(trainable, opt_state, since_fired,
                                                               jnp.asarray(batch * norm_factor))
            if step == 1 or step % config.log_every == 0 or step == config.steps:
                stats = jax.device_get(stats)
                log["step"].append(step)
                log["loss"].append(float(stats["loss"]))
                log["fvu"].append(float(stats["fvu"]))
                log["l0"].append(float(stats["l0"]))
                log["dead_fraction"].append(float(stats["dead"]))
                bar.set_postfix(loss=f"{stats['loss']:.4f}", fvu=f"{stats['fvu']:.4f}", l0=f"{stats['l0']:.1f}")
            bar.update(1)
    params = dataclasses.replace(_as_params(trainable, config), norm_factor=norm_factor, out_norm_factor=norm_factor)
    params = jax.tree_util.tree_map(lambda a: jax.device_get(a), params)
    return params, TrainLog(
        **{key: tuple(values) for key, values in log.items()},
        n_tokens=config.steps * config.batch_size, n_rows_unused=int(counter["held"]),
        norm_factor=norm_factor, seconds=time.perf_counter() - started,
    )
