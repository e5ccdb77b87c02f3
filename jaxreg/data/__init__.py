"""Data for jaxreg: bundled real datasets (digits, text) as tfds builders, MultiDigits (two
overlaid digits, two labels), label noise, input pipeline, and image augmentations in JAX
(``jaxreg.data.augment``)."""

from jaxreg.data import augment
from jaxreg.data.digits import (
    SklearnDigits,
    data_source,
    default_data_dir,
    load_digits,
    load_digits_splits,
)
from jaxreg.data.label_noise import (
    ASYMMETRIC_CONVENTIONS,
    DIGITS_ASYMMETRIC_MAP,
    SYMMETRIC_CONVENTIONS,
    asymmetric_noise,
    noise_report,
    symmetric_noise,
)
from jaxreg.data.multidigits import load_multidigits, overlay_pairs
from jaxreg.data.pipeline import batches, epoch_indices, num_batches
from jaxreg.data.text import TextCorpus, load_text, text_source, unigram_entropy

__all__ = [
    "ASYMMETRIC_CONVENTIONS",
    "DIGITS_ASYMMETRIC_MAP",
    "SYMMETRIC_CONVENTIONS",
    "SklearnDigits",
    "TextCorpus",
    "asymmetric_noise",
    "augment",
    "batches",
    "data_source",
    "default_data_dir",
    "epoch_indices",
    "load_digits",
    "load_digits_splits",
    "load_multidigits",
    "load_text",
    "noise_report",
    "num_batches",
    "overlay_pairs",
    "symmetric_noise",
    "text_source",
    "unigram_entropy",
]
