"""Experiments that check the papers' claims at small scale; each has ``main(argv)``.

Run one with ``jaxreg run NAME [--quick] [--out DIR]``.
"""

import importlib

EXPERIMENTS = {
    "noisy-labels": "jaxreg.experiments.noisy_labels",
    "multitask": "jaxreg.experiments.multitask",
    "pinn": "jaxreg.experiments.pinn",
    "auxiliary": "jaxreg.experiments.auxiliary",
    "sharpness": "jaxreg.experiments.sharpness",
    "orthogonality": "jaxreg.experiments.orthogonality",
    "weight-decay": "jaxreg.experiments.weight_decay",
    "vat": "jaxreg.experiments.vat",
    "mixup": "jaxreg.experiments.mixup",
    "grokking": "jaxreg.experiments.grokking",
    "fairness": "jaxreg.experiments.fairness",
    "pretrain": "jaxreg.experiments.pretrain",
}


def get(name: str):
    """The ``main`` function of experiment ``name``; the error lists the valid names."""
    if name not in EXPERIMENTS:
        raise KeyError(f"unknown experiment {name!r}; available: {', '.join(EXPERIMENTS)}")
    return importlib.import_module(EXPERIMENTS[name]).main
