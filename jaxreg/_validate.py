"""Trace-time input checks shared by every component.

Each check raises a ``ValueError`` or ``TypeError`` whose message names the argument, what
was expected and what came. Shape and dtype checks cost nothing under ``jax.jit``. Values are
checked only where they are concrete (not traced): a hyperparameter given as a Python number
(:func:`hyperparameter`), integer labels given as arrays outside ``jit``
(:func:`class_labels`). Traced labels follow a NaN rule and are checked with ``checkify``
under :func:`debug_checks` (public as ``jaxreg.checks``).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import operator
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify


def float_array(x, name: str, *, min_ndim: int = 0):
    """Returns ``x`` as a floating array, upcast to float32 if it is narrower.

    Low-precision inputs (bfloat16, float16) are computed in float32 so that log-sum-exp and
    powers stay finite.
    """
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"`{name}` must be a floating array, got dtype {x.dtype}.")
    if x.ndim < min_ndim:
        raise ValueError(
            f"`{name}` must have at least {min_ndim} dimension(s), got shape {x.shape}.")
    return at_least_float32(x)


def at_least_float32(x) -> jax.Array:
    """``x`` as an array of float32 or a wider type. Already wide enough, it is returned as it
    is, so a weakly typed scalar (a Python number) stays weak and does not widen float32
    arrays it meets under ``jax_enable_x64``."""
    x = jnp.asarray(x)
    wide = jnp.promote_types(x.dtype, jnp.float32)
    return x if x.dtype == wide else x.astype(wide)


def logits_and_labels(logits, labels, *, logits_name="logits", labels_name="labels"):
    """Checks ``logits [..., K]`` against integer ``labels [...]``; returns both (logits in
    float32 or wider)."""
    logits = float_array(logits, logits_name, min_ndim=1)
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(
            f"`{labels_name}` must hold integer class indices, got dtype {labels.dtype}; "
            "for soft or one-hot targets use a loss that takes probabilities.")
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"`{labels_name}` must have shape {logits.shape[:-1]} (the shape of "
            f"`{logits_name}` without its class axis), got {labels.shape}.")
    return logits, labels


def same_shape(a, b, a_name: str, b_name: str):
    """Raises unless ``a`` and ``b`` have the same shape."""
    if jnp.shape(a) != jnp.shape(b):
        raise ValueError(
            f"`{b_name}` must have the shape of `{a_name}`, {jnp.shape(a)}, got {jnp.shape(b)}.")


def logits_and_targets(logits, targets, *, logits_name="logits", targets_name="targets"):
    """Checks ``logits [..., K]`` against same-shaped targets (multi-hot or probabilities)."""
    logits = float_array(logits, logits_name, min_ndim=1)
    targets = jnp.asarray(targets)
    dtype = targets.dtype
    if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
            or dtype == jnp.bool_):
        raise TypeError(f"`{targets_name}` must be real (float, integer or boolean), got dtype "
                        f"{targets.dtype}.")
    same_shape(logits, targets, logits_name, targets_name)
    return logits, targets.astype(logits.dtype)


def class_vector(values, num_classes: int, name: str):
    """Checks a per-class vector (counts or priors) of length ``num_classes``; returns float32+."""
    values = jnp.asarray(values)
    if not jnp.issubdtype(values.dtype, jnp.floating):
        values = values.astype(jnp.float32)
    values = float_array(values, name)
    if values.shape != (num_classes,):
        raise ValueError(f"`{name}` must have shape ({num_classes},), got {values.shape}.")
    return values


def kernels_only(params):
    """The default leaf mask: leaves with at least two dimensions (kernels and embeddings, not
    biases or normalisation scales)."""
    return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def every_leaf(params):
    """A leaf mask selecting every leaf."""
    return jax.tree.map(lambda _: True, params)


def leaf_mask(mask, params, name: str = "mask", *, default=kernels_only):
    """Resolves ``mask`` (None: ``default``, :func:`kernels_only` unless given; a pytree of
    booleans; or a function of the parameters returning one) to a pytree of Python booleans
    shaped like ``params``."""
    chosen = default if mask is None else mask
    chosen = chosen(params) if callable(chosen) else chosen
    try:
        return jax.tree.map(lambda _, on: bool(on), params, chosen)
    except ValueError as error:
        raise ValueError(f"`{name}` must have the tree structure of the parameters: "
                         f"{error}") from None


def tree_like(tree, params, name: str):
    """Checks that ``tree`` (an anchor, a Fisher diagonal) matches ``params`` leaf for leaf in
    structure and shape; returns its leaves as float32-or-wider arrays."""
    try:
        pairs = jax.tree.map(lambda p, t: (p, t), params, tree)
    except ValueError as error:
        raise ValueError(f"`{name}` must have the tree structure of the parameters: "
                         f"{error}") from None

    def check(pair):
        p, t = pair
        same_shape(p, t, "params", name)
        return float_array(t, name)

    return jax.tree.map(check, pairs, is_leaf=lambda x: isinstance(x, tuple))


# -- Hyperparameter domains -------------------------------------------------------------------

def is_concrete(value) -> bool:
    """True unless ``value`` is (or holds) a JAX tracer, i.e. its value is known now."""
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(value))


def _bound(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def hyperparameter(value, name: str, *, low=None, high=None, low_open: bool = False,
                   high_open: bool = False):
    """Checks that a concrete hyperparameter lies in its domain; returns ``value`` unchanged.

    ``low``/``high`` are the bounds (None: unbounded), closed unless ``low_open``/``high_open``.
    A traced value (under ``jit``/``vmap``/``grad``) cannot be checked and is returned as is;
    a Python number, NumPy or concrete JAX array is checked element by element (NaN is never
    in a domain). Raises ``ValueError("`q` must be in [0, 1], got 1.5.")`` and the like.
    """
    if value is None or not is_concrete(value):
        return value
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"`{name}` must be a real number, got {type(value).__name__} "
                        f"{value!r}.") from None
    ok = np.ones(array.shape, bool)
    if low is not None:
        ok &= array > low if low_open else array >= low
    if high is not None:
        ok &= array < high if high_open else array <= high
    ok &= ~np.isnan(array)
    if not np.all(ok):
        if high is None:
            domain = f"{'>' if low_open else '>='} {_bound(low)}"
        elif low is None:
            domain = f"{'<' if high_open else '<='} {_bound(high)}"
        else:
            domain = (f"in {'(' if low_open else '['}{_bound(low)}, {_bound(high)}"
                      f"{')' if high_open else ']'}")
        if array.ndim:
            got = array[~ok].tolist()
        else:
            got = value if isinstance(value, (int, float)) else array.item()
        raise ValueError(f"`{name}` must be {domain}, got {got}.")
    return value


def static_int(value, name: str, *, low: int) -> int:
    """A static (Python) integer hyperparameter ``>= low``: a shape, a count of iterations
    or samples. Bools and floats raise a ``TypeError``, smaller values a ``ValueError``."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be an int, got {value!r}.")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"`{name}` must be an int (it is static), got "
                        f"{type(value).__name__} {value!r}.") from None
    if value < low:
        raise ValueError(f"`{name}` must be >= {low}, got {value}.")
    return value


def nonnegative(value, name: str):
    """:func:`hyperparameter` with domain ``[0, inf)``."""
    return hyperparameter(value, name, low=0)


def positive(value, name: str):
    """:func:`hyperparameter` with domain ``(0, inf)``."""
    return hyperparameter(value, name, low=0, low_open=True)


def check_strength(value, name: str = "strength"):
    """The shared check of every regularizer's ``strength``: a concrete value must be >= 0
    (a negative strength rewards what the penalty is meant to discourage)."""
    return nonnegative(value, name)


# -- Integer class labels ---------------------------------------------------------------------
#
# The rule, for every loss that takes integer labels with K classes:
#   * a label in [0, K) is a class; ``ignore_index`` (a static int, default None) marks an
#     example whose loss is exactly 0 with a zero gradient;
#   * any other label (K, 1000, -1: no wrap-around) gives a NaN loss (and gradient) for that
#     example, never a finite value;
#   * when the labels are concrete (not traced) such a label raises a ValueError naming
#     `labels`, its value(s) and K before any computation;
#   * under ``debug_checks()`` the same range check is emitted for traced labels with
#     ``jax.experimental.checkify.check``, so ``checkify.checkify(jax.jit(f))`` reports it.

_DEBUG_CHECKS = contextvars.ContextVar("jaxreg_debug_checks", default=False)


def debug_checks_enabled() -> bool:
    """Whether :func:`debug_checks` is active in this context (thread)."""
    return _DEBUG_CHECKS.get()


@contextlib.contextmanager
def debug_checks(enabled: bool = True):
    """Context manager: while active, value checks that cannot run at trace time (labels out of
    ``[0, K)``) are emitted as ``jax.experimental.checkify`` checks.

    Functions traced inside it must be run under ``checkify.checkify`` (a ``check`` staged
    out under ``jit`` without it fails to lower, on purpose: debug mode never passes
    silently)::

        with jaxreg.checks.debug_checks():
            err, loss = checkify.checkify(jax.jit(cross_entropy))(logits, labels)
        err.throw()  # ValueError naming `labels` if a label is out of range

    Entering and leaving clear JAX's compilation caches (``jax.clear_caches``), so functions
    traced before are traced again with the checks, and those traced inside are not reused
    without them. Outside the context no checkify operation is emitted. The setting is a
    ``contextvars`` variable: it applies to the current thread (or task).
    """
    token = _DEBUG_CHECKS.set(bool(enabled))
    jax.clear_caches()
    try:
        yield
    finally:
        _DEBUG_CHECKS.reset(token)
        jax.clear_caches()


class LabelMask(NamedTuple):
    """Which examples have a usable label: ``in_range`` (a class in ``[0, K)``, not ignored)
    and ``ignored`` (equal to ``ignore_index``); every other example is invalid."""
    in_range: jax.Array
    ignored: jax.Array

    def apply(self, loss):
        """The per-example ``loss`` (computed on the safe labels) with the rule applied: 0
        (zero gradient) where ignored, NaN (NaN gradient) where the label is invalid."""
        keep = jnp.where(self.in_range | self.ignored, 1.0, jnp.nan).astype(loss.dtype)
        return jnp.where(self.ignored, jnp.zeros_like(loss), loss * keep)


def _ignore_index(ignore_index):
    if ignore_index is None:
        return None
    if isinstance(ignore_index, (bool, np.bool_)):
        raise TypeError(f"`ignore_index` must be an int or None, got {ignore_index!r}.")
    try:
        return operator.index(ignore_index)
    except TypeError:
        raise TypeError(f"`ignore_index` must be an int or None (it is static), got "
                        f"{type(ignore_index).__name__} {ignore_index!r}.") from None


def _label_rule(num_classes: int, ignore_index) -> str:
    rule = f"class indices in [0, {num_classes}) (K = {num_classes} classes)"
    return rule if ignore_index is None else f"{rule} or ignore_index={ignore_index}"


def class_labels(labels, num_classes: int, *, ignore_index=None, labels_name: str = "labels"):
    """Applies the label rule to integer ``labels`` (dtype and shape already checked) for
    ``num_classes`` classes; returns ``(safe_labels, LabelMask)``.

    ``safe_labels`` equal ``labels`` where they are classes and 0 elsewhere, so the loss
    computed on them is finite everywhere; ``LabelMask.apply`` then sets the ignored examples
    to 0 and the invalid ones to NaN.
    """
    ignore_index = _ignore_index(ignore_index)
    labels = jnp.asarray(labels)
    if is_concrete(labels):
        values = np.asarray(labels)
        bad = (values < 0) | (values >= num_classes)
        if ignore_index is not None:
            bad &= values != ignore_index
        if np.any(bad):
            offending = np.unique(values[bad])
            shown = ", ".join(str(v) for v in offending[:5].tolist())
            more = f" and {offending.size - 5} more" if offending.size > 5 else ""
            raise ValueError(
                f"`{labels_name}` must hold {_label_rule(num_classes, ignore_index)}, got "
                f"{shown}{more} ({int(np.sum(bad))} of {values.size} examples).")
    ignored = (labels == ignore_index if ignore_index is not None
               else jnp.zeros(labels.shape, bool))
    in_range = (labels >= 0) & (labels < num_classes) & ~ignored
    if debug_checks_enabled() and not is_concrete(labels):
        valid = in_range | ignored
        first_bad = labels.ravel()[jnp.argmin(valid.ravel())] if labels.size else 0
        checkify.check(jnp.all(valid),
                       f"`{labels_name}` must hold {_label_rule(num_classes, ignore_index)}, "
                       "got {label}.", label=first_bad)
    safe = jnp.where(in_range, labels, jnp.zeros_like(labels))
    return safe, LabelMask(in_range, ignored)


def batched_logits_and_labels(logits, labels, *, ignore_index=None, num_classes=None,
                              logits_name: str = "logits", labels_name: str = "labels"):
    """:func:`logits_and_labels` for losses: ``logits [..., B, K]`` (at least a batch axis
    and a class axis, and at least one example) and integer ``labels [..., B]``, with the
    label rule of :func:`class_labels` (``num_classes`` defaults to ``K``, the last axis of
    the logits). Returns ``(logits, safe_labels, LabelMask)``."""
    shape = jnp.shape(logits)
    if len(shape) < 2:
        raise ValueError(
            f"`{logits_name}` must have a batch axis and a class axis, [B, K] (or "
            f"[..., B, K]), got shape {tuple(shape)}; for one example pass "
            f"`{logits_name}[None]` and `{labels_name}[None]`.")
    logits, labels = logits_and_labels(logits, labels, logits_name=logits_name,
                                       labels_name=labels_name)
    if math.prod(logits.shape[:-1]) == 0:
        raise ValueError(f"`{logits_name}` is an empty batch (shape {logits.shape}): a "
                         "per-example loss needs at least one example.")
    num_classes = logits.shape[-1] if num_classes is None else num_classes
    if num_classes < 1:
        raise ValueError(f"`{logits_name}` must have at least one class, got shape "
                         f"{logits.shape}.")
    safe, mask = class_labels(labels, num_classes, ignore_index=ignore_index,
                              labels_name=labels_name)
    return logits, safe, mask
