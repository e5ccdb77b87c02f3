"""Benchmark: what ``jaxreg.train.make_step`` costs over a hand-written optax step.

The byte-level transformer of ``jaxreg run pretrain`` (``jaxreg.models.transformer``; d 128,
4 layers, 4 heads, T 128 by default), loss = next-byte cross-entropy + PaLM's z-loss
(``jaxreg.regularizers.logit_z_loss``, 1e-4), Adam with global-norm clipping, batch 16 of
random bytes. Every way starts from the same weights and sees the same batches:

    hand-written optax  ``jax.jit`` of ``value_and_grad`` + ``optimizer.update`` +
                        ``apply_updates`` over (params, opt_state), the loss returned: what a
                        user writes without jaxreg.
    make_step sum       ``jax.jit(make_step(objective, optimizer))`` on a ``TrainState``:
                        the key split, the step count, the named terms as metrics.
    make_step agg(1)    ``make_step(..., aggregator=mean())`` with the loss as ONE objective:
                        the per-term path (the VJP vmapped over one cotangent, the Gramian
                        metrics), which must cost the same as the summed step.

All jitted with the state donated. Steps are timed in blocks of ``--block`` after a
``block_until_ready``, the ways interleaved block by block so that a change in the machine's
load hits all of them alike:

    first s     the first block, including tracing and compilation.
    ms/step     the median block after the first, divided by the block size.
    x hand      that time divided by the hand-written step's in the same run (the target is
                at most 1.05).
    max|dp|     the largest absolute difference of the final parameters from the hand-written
                step's: float32 rounding means the same computation.

Usage: ``python benchmarks/overhead.py [--d-model 128] [--layers 4] [--blocks 10]
[--block 10]``. The header prints the load average: on a loaded machine the ratios are noise.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from _common import cores, max_difference
from jaxreg import multiobjective, train
from jaxreg.models.transformer import TransformerConfig, transformer
from jaxreg.regularizers import logit_z_loss

Z_LOSS = 1e-4


def setup(args):
    model = transformer(TransformerConfig(d_model=args.d_model, num_layers=args.layers,
                                          num_heads=4, max_length=args.length))
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
    params = model.init(jax.random.PRNGKey(0))
    rng = np.random.default_rng(1)
    batches = [jnp.asarray(rng.integers(0, 256, (args.batch, args.length + 1), np.int32))
               for _ in range(args.block)]

    def loss_of(p, tokens):
        logits = model.apply(p, tokens[:, :-1])
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()
        return ce + logit_z_loss(logits, strength=Z_LOSS).mean()

    return model, optimizer, params, batches, loss_of


def ways(optimizer, params, loss_of):
    """name -> (jitted step, make the initial state, params of a state, batch of tokens)."""

    def hand(carry, tokens):
        p, opt_state = carry
        loss, grads = jax.value_and_grad(loss_of)(p, tokens)
        updates, opt_state = optimizer.update(grads, opt_state, p)
        return (optax.apply_updates(p, updates), opt_state), loss

    def objective(p, batch, hparams, key):
        return {"loss": loss_of(p, batch["tokens"])}

    def jaxreg_way(aggregator):
        step = train.make_step(objective, optimizer, aggregator=aggregator)
        init = lambda: train.init_state(jax.tree.map(jnp.copy, params), optimizer,
                                        key=jax.random.PRNGKey(2), aggregator=aggregator)
        return (jax.jit(step, donate_argnums=0), init, lambda state: state.params,
                lambda tokens: {"tokens": tokens})

    return {"hand-written optax": (jax.jit(hand, donate_argnums=0),
                                   lambda: (jax.tree.map(jnp.copy, params),
                                            optimizer.init(params)),
                                   lambda carry: carry[0], lambda tokens: tokens),
            "make_step sum": jaxreg_way(None),
            "make_step agg(1)": jaxreg_way(multiobjective.mean())}


def run(args) -> list[tuple[str, float, float, float, float]]:
    model, optimizer, params, batches, loss_of = setup(args)
    table = ways(optimizer, params, loss_of)
    states = {name: init() for name, (_, init, _, _) in table.items()}
    blocks = {name: [] for name in table}
    for _ in range(args.blocks):
        for name, (step, _, _, wrap) in table.items():
            jax.block_until_ready(states[name])
            start = time.perf_counter()
            for tokens in batches:
                states[name], _ = step(states[name], wrap(tokens))
            jax.block_until_ready(states[name])
            blocks[name].append(time.perf_counter() - start)
    reference = table["hand-written optax"][2](states["hand-written optax"])
    base = statistics.median(blocks["hand-written optax"][1:])
    rows = []
    for name, (_, _, params_of, _) in table.items():
        median = statistics.median(blocks[name][1:])
        rows.append((name, blocks[name][0], 1e3 * median / args.block, median / base,
                     max_difference(params_of(states[name]), reference)))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--blocks", type=int, default=10)
    parser.add_argument("--block", type=int, default=10)
    args = parser.parse_args()
    print(f"transformer d {args.d_model}, {args.layers} layers, T {args.length}, batch "
          f"{args.batch}; CE + z-loss, clipped Adam; {cores()} cores, load average "
          f"{os.getloadavg()[0]:.2f} (other processes skew timings); jax {jax.__version__} on "
          f"{jax.devices()[0].device_kind}")
    print(f"\n{'way':<22}{'first s':>9}{'ms/step':>10}{'x hand':>8}{'max|dp|':>10}")
    for name, first, ms, ratio, dp in run(args):
        print(f"{name:<22}{first:>9.3f}{ms:>10.3f}{ratio:>8.3f}{dp:>10.1e}")


if __name__ == "__main__":
    main()
