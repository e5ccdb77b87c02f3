"""Domain-generalization penalties: IRMv1, V-REx, Fishr and Hessian alignment (HGP, Hutchinson).

Every penalty takes ``apply_fn(params, inputs) -> logits [B, K]`` (typically the classifier head
applied to features, as DomainBed does), integer ``labels [B]`` and integer ``environments [B]``
(environment ids in ``[0, num_environments)``; ``num_environments`` is a static keyword, so the
function jits). The risk of environment ``e`` is the mean softmax cross-entropy over its examples,
``R_e = (1/n_e) sum_{i in e} l_i``. Labels follow the rule of ``jaxreg.losses``: concrete labels
outside ``[0, K)`` raise a ``ValueError`` naming ``labels``; traced ones give a NaN loss (so a
NaN penalty), never a finite value. A concrete ``strength`` (and Hessian alignment's ``alpha``,
``beta``) must be ``>= 0``; traced values are not checked. Environments with no example in the
batch are left out of every average (ids out of range cannot be checked at trace time and are
ignored). Every penalty is returned already multiplied by ``strength``.

* IRMv1 (Arjovsky et al., "Invariant Risk Minimization", 2019, arXiv:1907.02893, Eq. IRMv1):
  ``mean_e (d/dw R_e(w * logits) |_{w=1})^2``, the squared gradient of each environment's risk
  w.r.t. a dummy scale on the logits, averaged over environments as in the official
  facebookresearch/InvariantRiskMinimization colored-MNIST code. ``unbiased=True`` gives the
  facebookresearch/DomainBed ``IRM._irm_penalty`` estimate instead: the product of the gradients
  on the even- and odd-indexed examples of each environment (``logits[::2]``, ``logits[1::2]``).
  Default strength 100, DomainBed's ``irm_lambda``.
* V-REx (Krueger et al., "Out-of-Distribution Generalization via Risk Extrapolation (REx)",
  2021, arXiv:2003.00688, Eq. 8): ``Var_e(R_e)``, the population variance of the environments'
  risks (DomainBed ``VREx``). Default strength 10, DomainBed's ``vrex_lambda``.
* Fishr (Rame et al., "Fishr: Invariant Gradient Variances for Out-of-Distribution
  Generalization", 2022, arXiv:2109.02934, Eq. 4): ``v_e = Var_{i in e}(grad_theta l_i)`` (the
  biased per-coordinate variance of the per-example gradients), ``v = mean_e v_e``, penalty
  ``mean_e ||v_e - v||^2``. Per-example gradients come from ``vmap(grad)`` (the official
  alexrame/fishr code uses BackPACK's ``BatchGrad`` on the classifier). Default strength 1000,
  the DomainBed ``lambda`` of alexrame/fishr. Departures: the official DomainBed code averages
  the squared difference over coordinates (``l2_between_dicts`` uses ``.mean()``;
  ``coordinate_mean=True`` reproduces it) and smooths each ``v_e`` by an exponential moving
  average across steps (``ema=0.95``), which a stateless function cannot do: the value here is
  the official one on the first step (where its bias-corrected EMA equals ``v_e``).
* Hessian alignment (Hemati et al., "Understanding Hessian Alignment for Domain Generalization",
  ICCV 2023, arXiv:2308.11778), as in huawei-noah/Federated-Learning
  ``HessianAlignment/domainbed/algorithms.py`` (classes ``HGP`` and ``Hutchinson``):
  ``mean_e [alpha ||A_e - A_bar||^2 + beta ||g_e - g_bar||^2]`` with ``g_e = grad R_e``,
  ``g_bar = grad mean_e R_e``. HGP takes ``A_e = H_e g_e`` (the Hessian-gradient product, computed
  exactly here as an HVP; the reference gets it as ``||g|| grad ||g||``) and ``A_bar = H_bar
  g_bar``; Hutchinson takes ``A_e = diag(H_e)`` estimated as ``mean_s z_s * (H_e z_s)`` with
  Rademacher ``z_s``. Defaults: ``alpha = 1e-4``, ``beta = 5e-3`` (the reference's HGP
  ``penalty_alpha``/``penalty_beta``; its Hutchinson uses ``alpha = 1e-3``) and ``num_samples =
  300`` probes as in the reference. Departures: the reference detaches ``A_bar`` and ``g_bar``
  (``detach_mean=True`` reproduces it; values are equal, gradients differ); the reference draws
  independent probes for each environment and for the mean, here they share the probes (an
  unbiased estimate of the same quantity, with less variance in the differences).

Gradients are taken w.r.t. all of ``params``; to penalize the classifier head only (as the
references do), pass the head's parameters and features as ``inputs``. Hessians are never
materialized: HVPs are ``jax.jvp`` of ``jax.grad``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from jaxreg._validate import check_strength, class_labels, logits_and_labels, nonnegative


def _float_params(params):
    """Checks that every leaf of ``params`` is floating; returns them in float32 or wider."""
    leaves = jax.tree.leaves(params)
    if not leaves:
        raise ValueError("`params` must hold at least one array, got an empty tree.")
    for leaf in leaves:
        dtype = jnp.asarray(leaf).dtype
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"`params` must hold floating arrays, got a leaf of dtype {dtype}.")
    return jax.tree.map(lambda p: jnp.asarray(p).astype(jnp.promote_types(p.dtype, jnp.float32)),
                        params)


def _float_inputs(inputs):
    """Upcasts floating leaves of ``inputs`` narrower than float32 (bfloat16) to float32."""
    def upcast(x):
        x = jnp.asarray(x)
        if jnp.issubdtype(x.dtype, jnp.floating):
            return x.astype(jnp.promote_types(x.dtype, jnp.float32))
        return x
    return jax.tree.map(upcast, inputs)


def _environment_weights(labels, environments, num_environments, dtype):
    """Checks ``labels`` and ``environments``; returns ``(weights [E, B], present [E])``, the
    weights in ``dtype`` (the model's computation dtype: float64 stays float64).

    Row ``e`` of ``weights`` is ``1/n_e`` on the examples of environment ``e`` (0 elsewhere), so
    ``weights @ losses`` are the environments' risks; ``present`` marks environments with
    ``n_e > 0``.
    """
    if not isinstance(num_environments, int) or isinstance(num_environments, bool) \
            or num_environments < 1:
        raise ValueError("`num_environments` must be a static positive int, got "
                         f"{num_environments!r}.")
    labels = jnp.asarray(labels)
    environments = jnp.asarray(environments)
    if not jnp.issubdtype(environments.dtype, jnp.integer):
        raise TypeError("`environments` must hold integer environment ids, got dtype "
                        f"{environments.dtype}.")
    if labels.ndim != 1:
        raise ValueError(f"`labels` must have shape [B], got {labels.shape}.")
    if environments.shape != labels.shape:
        raise ValueError(f"`environments` must have the shape of `labels`, {labels.shape}, got "
                         f"{environments.shape}.")
    one_hot = (environments[None, :] == jnp.arange(num_environments)[:, None]).astype(dtype)
    counts = jnp.sum(one_hot, axis=1)
    return one_hot / jnp.maximum(counts, 1.0)[:, None], counts > 0


def _output_dtype(apply_fn, params, inputs):
    """The dtype the penalty is computed in: the model's output dtype, at least float32 (from
    shapes only, no computation)."""
    out = jax.eval_shape(apply_fn, _float_params(params), _float_inputs(inputs))
    return jnp.promote_types(out.dtype, jnp.float32)


def _mean_over_present(values, present):
    """Mean of ``values [E, ...]`` over the environments present in the batch."""
    mask = present.reshape(present.shape + (1,) * (values.ndim - 1))
    return jnp.sum(jnp.where(mask, values, 0.0), axis=0) / jnp.maximum(jnp.sum(present), 1)


def _losses_fn(apply_fn, inputs, labels):
    """``params -> per-example cross-entropy [B]`` (float32), checking the logits' shape."""
    def losses(params):
        logits, checked = logits_and_labels(apply_fn(params, inputs), labels,
                                            logits_name="apply_fn(params, inputs)")
        safe, mask = class_labels(checked, logits.shape[-1])
        return mask.apply(-jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1),
                                               safe[:, None], axis=-1)[:, 0])
    return losses


def irm_penalty(apply_fn, params, inputs, labels, environments, *, num_environments,
                strength=100.0, unbiased=False):
    """IRMv1 penalty, ``strength * mean_e (dR_e(w * logits)/dw |_{w=1})^2`` (arXiv:1907.02893).

    Args:
      apply_fn: ``apply_fn(params, inputs) -> logits [B, K]``.
      params: parameter pytree of floating arrays.
      inputs: the batch ``apply_fn`` takes.
      labels: integer class indices ``[B]``.
      environments: integer environment ids ``[B]``.
      num_environments: static number of environments ``E``.
      strength: the penalty weight lambda (DomainBed's ``irm_lambda``).
      unbiased: if True, DomainBed's estimate ``grad_even * grad_odd`` per environment (even- and
        odd-indexed examples of that environment, in batch order) instead of ``grad^2``.

    Returns:
      The scalar penalty.
    """
    check_strength(strength)
    weights, present = _environment_weights(labels, environments, num_environments,
                                            _output_dtype(apply_fn, params, inputs))
    logits, labels = logits_and_labels(apply_fn(_float_params(params), _float_inputs(inputs)),
                                       labels, logits_name="apply_fn(params, inputs)")
    labels, mask = class_labels(labels, logits.shape[-1])

    def losses(scale):
        log_p = jax.nn.log_softmax(scale * logits, axis=-1)
        return mask.apply(-jnp.take_along_axis(log_p, labels[:, None], axis=-1)[:, 0])

    # d l_i / dw at w = 1 for every example, in one forward-mode pass.
    _, per_example = jax.jvp(losses, (jnp.float32(1.0),), (jnp.float32(1.0),))
    if unbiased:
        member = weights > 0
        rank = jnp.cumsum(member, axis=1) - 1  # position of each example within its environment
        even = member & (rank % 2 == 0)
        odd = member & (rank % 2 == 1)

        def half_mean(half):
            return jnp.sum(jnp.where(half, per_example, 0.0), axis=1) / jnp.maximum(
                jnp.sum(half, axis=1), 1)
        per_environment = half_mean(even) * half_mean(odd)
    else:
        per_environment = jnp.square(weights @ per_example)
    return strength * _mean_over_present(per_environment, present)


def vrex_penalty(apply_fn, params, inputs, labels, environments, *, num_environments,
                 strength=10.0):
    """V-REx penalty, ``strength * Var_e(R_e)`` (arXiv:2003.00688, Eq. 8).

    The population variance of the per-environment mean cross-entropies (DomainBed ``VREx``).

    Args:
      apply_fn: ``apply_fn(params, inputs) -> logits [B, K]``.
      params: parameter pytree of floating arrays.
      inputs: the batch ``apply_fn`` takes.
      labels: integer class indices ``[B]``.
      environments: integer environment ids ``[B]``.
      num_environments: static number of environments ``E``.
      strength: the penalty weight beta (DomainBed's ``vrex_lambda``).

    Returns:
      The scalar penalty.
    """
    check_strength(strength)
    weights, present = _environment_weights(labels, environments, num_environments,
                                            _output_dtype(apply_fn, params, inputs))
    risks = weights @ _losses_fn(apply_fn, _float_inputs(inputs), labels)(_float_params(params))
    mean = _mean_over_present(risks, present)
    return strength * _mean_over_present(jnp.square(risks - mean), present)


def fishr_penalty(apply_fn, params, inputs, labels, environments, *, num_environments,
                  strength=1000.0, coordinate_mean=False):
    """Fishr penalty, ``strength * mean_e ||v_e - mean_e' v_e'||^2`` (arXiv:2109.02934, Eq. 4).

    ``v_e`` is the per-coordinate variance (biased, ``1/n_e``) of the per-example gradients of
    the cross-entropy w.r.t. ``params`` over the examples of environment ``e``.

    Args:
      apply_fn: ``apply_fn(params, inputs) -> logits [B, K]``; called on one example at a time
        (inputs with a leading axis of 1), so it must not mix examples (no batch statistics).
      params: parameter pytree of floating arrays (the classifier head in the paper).
      inputs: the batch ``apply_fn`` takes, each leaf with leading axis ``B``.
      labels: integer class indices ``[B]``.
      environments: integer environment ids ``[B]``.
      num_environments: static number of environments ``E``.
      strength: the penalty weight lambda (DomainBed's ``lambda``).
      coordinate_mean: if True, the squared distance is averaged over parameter coordinates
        instead of summed, as DomainBed's ``l2_between_dicts`` does.

    Returns:
      The scalar penalty.
    """
    check_strength(strength)
    weights, present = _environment_weights(labels, environments, num_environments,
                                            _output_dtype(apply_fn, params, inputs))
    params = _float_params(params)
    inputs = _float_inputs(inputs)
    # The per-example losses see traced labels (vmap): check concrete ones here, against the
    # number of classes of the logits' shape (no computation).
    num_classes = jax.eval_shape(apply_fn, params, inputs).shape[-1]
    class_labels(jnp.asarray(labels), num_classes)

    def example_loss(p, x, y):
        x = jax.tree.map(lambda leaf: leaf[None], x)
        return _losses_fn(apply_fn, x, y[None])(p)[0]

    grads = jax.vmap(jax.grad(example_loss), in_axes=(None, 0, 0))(params, inputs,
                                                                 jnp.asarray(labels))
    grads = jax.vmap(lambda g: ravel_pytree(g)[0])(grads)  # [B, P]
    member = (weights > 0).astype(grads.dtype)  # [E, B]
    centred_grads = grads - member.T @ (weights @ grads)  # minus the mean of its environment
    variances = weights @ jnp.square(centred_grads)
    centred = variances - _mean_over_present(variances, present)
    distances = jnp.sum(jnp.square(centred), axis=1)
    if coordinate_mean:
        distances = distances / grads.shape[1]
    return strength * _mean_over_present(distances, present)


def hessian_alignment(apply_fn, params, inputs, labels, environments, key=None, *,
                      num_environments, estimator="hgp", alpha=1e-4, beta=5e-3,
                      num_samples=300, strength=1.0, detach_mean=False):
    """Hessian alignment, ``strength * mean_e [alpha ||A_e - A_bar||^2 + beta ||g_e - g_bar||^2]``.

    Hemati et al. (ICCV 2023, arXiv:2308.11778): ``g_e = grad R_e``, ``g_bar = grad mean_e R_e``;
    ``estimator="hgp"``: ``A_e = H_e g_e``, ``A_bar = H_bar g_bar`` (Hessian-gradient products);
    ``estimator="hutchinson"``: ``A_e = diag(H_e)``, ``A_bar = diag(H_bar)``, each estimated as
    ``mean_s z_s * (H z_s)`` over ``num_samples`` Rademacher probes drawn from ``key``.

    Args:
      apply_fn: ``apply_fn(params, inputs) -> logits [B, K]``.
      params: parameter pytree of floating arrays (the classifier head in the reference).
      inputs: the batch ``apply_fn`` takes.
      labels: integer class indices ``[B]``.
      environments: integer environment ids ``[B]``.
      key: PRNG key for the Hutchinson probes (unused by HGP).
      num_environments: static number of environments ``E``.
      estimator: ``"hgp"`` or ``"hutchinson"`` (static).
      alpha: weight of the Hessian term (the reference's ``penalty_alpha``).
      beta: weight of the gradient term (the reference's ``penalty_beta``).
      num_samples: static number of Hutchinson probes.
      strength: overall multiplier.
      detach_mean: if True, stop gradients through ``A_bar`` and ``g_bar`` as the reference does.

    Returns:
      The scalar penalty.
    """
    check_strength(strength)
    nonnegative(alpha, "alpha")
    nonnegative(beta, "beta")
    if estimator not in ("hgp", "hutchinson"):
        raise ValueError(f"`estimator` must be 'hgp' or 'hutchinson', got {estimator!r}.")
    if estimator == "hutchinson" and key is None:
        raise ValueError("`key` is required for estimator='hutchinson' (Rademacher probes).")
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"`num_samples` must be a static positive int, got {num_samples!r}.")
    weights, present = _environment_weights(labels, environments, num_environments,
                                            _output_dtype(apply_fn, params, inputs))
    params = _float_params(params)
    losses = _losses_fn(apply_fn, _float_inputs(inputs), labels)
    flat, unravel = ravel_pytree(params)
    # Rows 0..E-1: the environments' risks; row E: their mean (over present environments).
    rows = jnp.concatenate([weights, _mean_over_present(weights, present)[None]], axis=0)

    def grad_fn(row):
        return lambda theta: ravel_pytree(jax.grad(lambda p: row @ losses(p))(unravel(theta)))[0]

    def gradient_and_curvature(row):
        g = grad_fn(row)
        if estimator == "hgp":
            gradient, hessian_gradient = jax.jvp(g, (flat,), (g(flat),))
            return gradient, hessian_gradient
        probes = jax.random.rademacher(key, (num_samples, flat.size), flat.dtype)
        products = jax.vmap(lambda z: jax.jvp(g, (flat,), (z,))[1])(probes)
        return g(flat), jnp.mean(probes * products, axis=0)

    gradients, curvatures = jax.vmap(gradient_and_curvature)(rows)
    mean_gradient, mean_curvature = gradients[-1], curvatures[-1]
    if detach_mean:
        mean_gradient = jax.lax.stop_gradient(mean_gradient)
        mean_curvature = jax.lax.stop_gradient(mean_curvature)
    per_environment = (alpha * jnp.sum(jnp.square(curvatures[:-1] - mean_curvature), axis=1)
                       + beta * jnp.sum(jnp.square(gradients[:-1] - mean_gradient), axis=1))
    return strength * _mean_over_present(per_environment, present)
