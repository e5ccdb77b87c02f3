"""Pretraining ablations: z-loss x weight-decay coupling x learning rate x seeds, one grid.

The model, data and loss of ``experiments/pretrain.py`` at a smaller size; every member
of learning rates x {no z-loss, z-loss} x {coupled decay, decoupled decay} x seeds trains as
ONE vmapped ``jaxreg.train.grid`` program (one optimizer whose learning rate and two decays
are injected hyperparameters; the z-loss strength is the objective's), evaluated on the same
validation windows every ``ablations.evaluate_every`` steps. The two decays are equal at the
middle learning rate (``coupled x lr = decoupled``), so the coupling is what differs.

Claims (Wortsman et al., "Small-scale proxies for large-scale Transformer training
instabilities", ICLR 2024, arXiv:2309.14322; PaLM, arXiv:2204.02311, Sec. 5), with decision
rules fixed before the run, on the final validation loss ``l`` and the learning-rate
sensitivity ``S = E_lr[min(l, l_0)] - min_lr l`` (Eq. 1; ``l_0`` the loss at initialization,
a diverged run counts as ``l_0``; ``jaxreg.diagnostics.learning_rate_sensitivity``):

1. the z-loss keeps the log-partition function near zero: over every (learning rate,
   coupling, seed) whose two runs stayed finite, the mean of ``|log Z|`` on validation without
   z-loss minus with it exceeds two standard errors of the paired differences;
2. the z-loss makes training less sensitive to the learning rate (it removes the output
   logit divergence at high rates, Wortsman et al. Sec. 3.2): ``S`` without minus ``S`` with
   z-loss, paired over (coupling, seed), has a mean above two standard errors;
3. decay decoupled from the learning rate lowers the sensitivity (Wortsman et al. Sec. 3.3.2,
   "independent weight decay"): ``S`` coupled minus ``S`` decoupled, paired over (z-loss,
   seed), has a mean above two standard errors.
"""

from __future__ import annotations

import os
import time

import numpy as np

from experiments.pretrain import (
    make_evaluate,
    make_objective,
    make_optimizer,
    model_of,
    spread_windows,
)
from jaxreg.protocol.report import Claim, markdown_table, mean_std, write_results

COUPLINGS = ("coupled", "decoupled")


def grid_configs(config) -> dict[str, list[float]]:
    """The zipped hyperparameter lists: learning rate x z-loss x coupling."""
    a, o = config.ablations, config.optimizer
    columns = {"learning_rate": [], "z_loss": [], "coupled_decay": [], "decoupled_decay": []}
    for lr in a.learning_rates:
        for z in a.z_losses:
            for coupling in COUPLINGS:
                columns["learning_rate"].append(float(lr))
                columns["z_loss"].append(float(z))
                columns["coupled_decay"].append(o.coupled_decay if coupling == "coupled" else 0.0)
                columns["decoupled_decay"].append(
                    o.decoupled_decay if coupling == "decoupled" else 0.0)
    return columns


def initial_losses(model, evaluate, seeds) -> np.ndarray:
    """``l_0`` per seed: the validation loss of the initial parameters (``grid`` initializes a
    seed's members with the first half of ``split(PRNGKey(seed))``)."""
    import jax

    evaluate = jax.jit(evaluate)
    return np.array([float(evaluate(model.init(jax.random.split(jax.random.PRNGKey(s))[0]))[
        "loss"]) for s in seeds])


def paired(differences) -> tuple[float, float, bool]:
    """Mean, standard error, and whether the mean exceeds two standard errors."""
    d = np.asarray([x for x in differences if np.isfinite(x)], float)
    if len(d) < 2:
        return float("nan"), float("nan"), False
    mean, se = float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))
    return mean, se, bool(mean > 2 * se)


def run_ablations(config, out_dir: str, progress: bool) -> dict:
    import jax.numpy as jnp

    from jaxreg import train
    from jaxreg.data import text
    from jaxreg.diagnostics import learning_rate_sensitivity

    a, t = config.ablations, config.train
    if t.steps % a.evaluate_every:
        raise ValueError(f"train.steps ({t.steps}) must be a multiple of "
                         f"ablations.evaluate_every ({a.evaluate_every})")
    train_set = text.load_text("train", corpus=config.data.corpus,
                               sequence_length=config.data.sequence_length)
    validation = text.load_text("validation", corpus=config.data.corpus,
                                sequence_length=config.data.sequence_length)
    model = model_of(config)
    evaluate = make_evaluate(model, spread_windows(validation, t.eval_windows),
                             chunk=min(t.batch_size, t.eval_windows))
    columns = grid_configs(config)
    optimizer = make_optimizer(config, t.steps)
    seeds = list(a.seeds)
    started = time.perf_counter()
    result = train.grid(make_objective(model), optimizer, model.init,
                        {"tokens": jnp.asarray(train_set["tokens"])}, hparams=columns,
                        seeds=seeds, epochs=t.steps // a.evaluate_every,
                        batch_size=t.batch_size, steps_per_epoch=a.evaluate_every,
                        evaluate=lambda state, data: evaluate(state.params), progress=progress,
                        desc="ablations")
    seconds = time.perf_counter() - started
    l0 = initial_losses(model, evaluate, seeds)
    lrs, zs = list(a.learning_rates), list(a.z_losses)
    shape = (len(lrs), len(zs), len(COUPLINGS), len(seeds))
    final = result.history["eval/loss"][..., -1].reshape(shape)  # [lr, z, coupling, seed]
    abs_log_z = result.history["eval/abs_log_z"][..., -1].reshape(shape)
    # sensitivity per (z, coupling, seed), over the learning rates
    sensitivity = np.asarray(learning_rate_sensitivity(
        jnp.moveaxis(jnp.asarray(final), 0, -1), jnp.asarray(l0)))  # [z, coupling, seed]
    no_z, with_z = zs.index(min(zs)), zs.index(max(zs))
    both = np.isfinite(abs_log_z[:, no_z]) & np.isfinite(abs_log_z[:, with_z])
    log_z_diff = np.where(both, abs_log_z[:, no_z] - abs_log_z[:, with_z], np.nan)
    claims = []
    mean, se, ok = paired(log_z_diff.ravel())
    claims.append(Claim("the z-loss keeps log Z near zero",
                        "mean |log Z| without minus with z-loss > 2 SE (paired runs)", ok,
                        f"{mean:+.3f} ± {se:.3f} over {int(both.sum())} pairs"))
    mean, se, ok = paired((sensitivity[no_z] - sensitivity[with_z]).ravel())
    claims.append(Claim("the z-loss lowers learning-rate sensitivity",
                        "S without minus S with z-loss > 2 SE (paired over coupling, seed)", ok,
                        f"{mean:+.3f} ± {se:.3f}"))
    coupled, decoupled = COUPLINGS.index("coupled"), COUPLINGS.index("decoupled")
    mean, se, ok = paired((sensitivity[:, coupled] - sensitivity[:, decoupled]).ravel())
    claims.append(Claim("decay independent of the learning rate lowers LR sensitivity",
                        "S coupled minus S decoupled > 2 SE (paired over z-loss, seed)", ok,
                        f"{mean:+.3f} ± {se:.3f}"))
    payload = {"config": config.to_dict(), "configs": result.configs, "seeds": seeds,
               "initial_loss": l0.tolist(), "final_loss": final.tolist(),
               "abs_log_z": abs_log_z.tolist(), "sensitivity": sensitivity.tolist(),
               "history": {k: v.tolist() for k, v in result.history.items()},
               "seconds": seconds, "claims": [c.__dict__ for c in claims]}
    text_out = report(config, lrs, zs, final, abs_log_z, sensitivity, l0, seconds, claims)
    write_results(out_dir, text_out, payload)
    plot(lrs, zs, final, os.path.join(out_dir, "sensitivity.png"))
    return payload


def report(config, lrs, zs, final, abs_log_z, sensitivity, l0, seconds, claims) -> str:
    header = ["z-loss", "decay"] + [f"loss @ lr {lr:g}" for lr in lrs] + [
        "\\|log Z\\| @ max lr", "LR sensitivity"]
    rows = []
    for zi, z in enumerate(zs):
        for ci, coupling in enumerate(COUPLINGS):
            cells = [mean_std(final[li, zi, ci], scale=1, digits=3) for li in range(len(lrs))]
            rows.append([f"{z:g}", coupling, *cells,
                         mean_std(abs_log_z[-1, zi, ci], scale=1, digits=2),
                         mean_std(sensitivity[zi, ci], scale=1, digits=3)])
    members = final.size
    lines = [f"# Pretraining ablations ({config.variant})", "",
             f"{members} runs (learning rates x z-loss x decay coupling x {final.shape[-1]} "
             f"seeds) of {config.train.steps} steps, batch {config.train.batch_size} x "
             f"{config.data.sequence_length} bytes, as one vmapped program: {seconds:.0f} s. "
             f"Final validation loss (nats/byte, mean ± std over seeds); initial loss "
             f"{float(np.mean(l0)):.3f}. Coupled decay {config.optimizer.coupled_decay:g} x lr, "
             f"decoupled decay {config.optimizer.decoupled_decay:g}.", "",
             markdown_table(header, rows), ""]
    lines += [c.line() for c in claims]
    return "\n".join(lines)


def plot(lrs, zs, final, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for zi, z in enumerate(zs):
        for ci, coupling in enumerate(COUPLINGS):
            ax.plot(lrs, np.nanmean(final[:, zi, ci], axis=-1), "o-" if z else "s--",
                    label=f"z-loss {z:g}, {coupling} decay")
    ax.set(xscale="log", xlabel="peak learning rate", ylabel="final validation loss",
           title="learning-rate sensitivity")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
