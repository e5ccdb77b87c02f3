"""Smoothness regularizers: penalties on how fast a model's output moves with its input (or
its loss with its parameters), and mixup.

All take ``apply_fn(params, inputs) -> outputs`` (or a ``loss_fn(params)``) and use
Jacobian-vector and vector-Jacobian products (``jax.vjp``, ``jax.grad``) or Hessian-vector
products; no Jacobian or Hessian is formed except by ``jacobian_penalty(..., exact=True)``,
which is meant for small outputs. Per-example quantities (gradients, normalizations) assume
``apply_fn`` treats the examples of a batch independently (no batch statistics); their
squared norms are averaged over the batch.

* ``virtual_adversarial``: Miyato, Maeda, Koyama & Ishii, "Virtual Adversarial Training: A
  Regularization Method for Supervised and Semi-Supervised Learning", TPAMI 2018,
  arXiv:1704.03976. With ``p(x)`` the softmax of the logits,

      d ~ N(0, I);  K times: d <- stop_grad(grad_d KL(p(x) || p(x + xi * n(d))))
      r_adv = epsilon * n(d);   LDS = mean_i KL(stop_grad(p(x_i)) || p(x_i + r_adv_i))

  with the per-example normalization ``n(d) = u / sqrt(1e-6 + sum u^2)``,
  ``u = d / (1e-12 + max |d|)``. Matches the official code (takerum/vat_tf ``vat.py``:
  ``get_normalized_vector``, ``generate_virtual_adversarial_perturbation``,
  ``virtual_adversarial_loss``; flags ``epsilon=8.0``, ``xi=1e-6``,
  ``num_power_iterations=1``; ``layers.kl_divergence_with_logit`` averaged over the batch).
  The reference's forward passes at ``x + d`` do not update batch-norm statistics; here
  ``apply_fn`` is the caller's, so pass one in the mode you want. ``num_power_iterations=0``
  gives the paper's random-perturbation baseline (RPT).

  Precision: ``xi = 1e-6`` is below float32 resolution for inputs of order 1 (entries of
  ``xi * n(d)`` are ~1e-6 / sqrt(dim), the spacing of float32 near 1 is 1.2e-7), so in
  float32 the finite difference ``p(x + d) - p(x)``, and with it the direction, is dominated
  by rounding, as in the float32 reference: the value changes by tens of percent between
  ``jit`` and eager execution on a small MLP (measured). In float64 it is the paper's
  direction. ``finite_difference=False`` (a departure, off by default) replaces the finite
  difference by the exact Hessian-vector product at ``r = 0`` that it approximates (the
  authors' description of ``xi``, vat_tf issue 13), which is stable in float32 and agrees with
  the float64 reference to ``O(xi)``.
* ``input_gradient_penalty``: ``mean_i ||grad_x s(f(x_i))||^2`` for a per-example scalar
  ``s`` (default: the sum of the outputs; pass ``output_fn`` for, e.g., the loss, which is
  double backpropagation, Drucker & LeCun 1992, or the log-probabilities of Ross &
  Doshi-Velez, "Improving the Adversarial Robustness and Interpretability of Deep Neural
  Networks by Regularizing their Input Gradients", AAAI 2018, arXiv:1711.09404).
* ``jacobian_penalty``: the contractive penalty ``mean_i ||J_f(x_i)||_F^2`` (Rifai et al.,
  "Contractive Auto-Encoders", ICML 2011; Alain & Bengio, "What Regularized Auto-Encoders
  Learn from the Data-Generating Distribution", JMLR 2014, arXiv:1211.4246), estimated with
  random projections ``||J||_F^2 = E_v ||v^T J||^2`` for Rademacher ``v`` in output space
  (Hutchinson's estimator of ``tr(J J^T)``, one VJP per projection; Hoffman, Roberts & Yaida,
  "Robust Learning with Jacobian Regularization", 2019, arXiv:1908.02729, use the same idea
  with vectors on the sphere), or exactly with one VJP per output unit (``exact=True``).
* ``r1_penalty`` / ``r2_penalty``: ``gamma / 2 * mean_i ||grad_x D(x_i)||^2`` on real (R1,
  Mescheder, Geiger & Nowozin 2018, arXiv:1801.04406) or generated (R2) samples, as R3GAN
  uses them (Huang, Gokaslan, Kuleshov & Tompkin, "The GAN is dead; long live the GAN! A
  Modern GAN Baseline", NeurIPS 2024, arXiv:2501.05441; official code ``R3GAN/Trainer.py``:
  ``ZeroCenteredGradientPenalty`` differentiates ``Critics.sum()`` and sums the squared
  gradient over all non-batch axes; the discriminator loss adds ``(Gamma / 2) * (R1 + R2)``
  per example before the batch mean). R3GAN has no single gamma: its presets start at 0.05
  (CIFAR-10), 2 (FFHQ-64), 150 (FFHQ-256), 0.5 (ImageNet-32), 1 (ImageNet-64) and decay them
  tenfold over training; the default here is therefore 1.0.
* ``hessian_trace_penalty``: ``strength * tr(H)`` of a loss by Hutchinson's estimator
  (``jaxreg.diagnostics.hessian.hessian_trace``), differentiable in the parameters (Liu, Yu
  & Zhu, "Regularizing Deep Neural Networks with Stochastic Estimators of Hessian Trace",
  2022, arXiv:2208.05924; without their dropout-style subsampling of layers).
* ``mixup``: Zhang, Cisse, Dauphin & Lopez-Paz, "mixup: Beyond Empirical Risk Minimization",
  ICLR 2018, arXiv:1710.09412: ``x~ = lam x + (1 - lam) x[perm]``, ``y~ = lam y + (1 - lam)
  y[perm]``, ``lam ~ Beta(alpha, alpha)``. Matches the official code
  (facebookresearch/mixup-cifar10 ``train.py`` ``mixup_data``: one ``lam`` per batch, a random
  permutation of the batch, ``lam = 1`` when ``alpha <= 0``, ``alpha = 1`` by default); its
  ``mixup_criterion`` ``lam CE(y_a) + (1 - lam) CE(y_b)`` equals the cross-entropy against
  the mixed targets returned here. One ``lam`` per example is offered behind
  ``per_example=True``.

Hyperparameters given as concrete numbers are checked at call time, naming them: every
``strength >= 0``, VAT's ``epsilon >= 0`` and ``xi > 0``; traced values are not checked.
Integer mixup ``targets`` follow the label rule of ``jaxreg.losses``: concrete ones outside
``[0, num_classes)`` raise a ``ValueError`` naming ``targets``, traced ones give NaN rows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxreg import _validate
from jaxreg.diagnostics import hessian
from jaxreg.regularizers.domain_generalization import _float_params


def _scalar(value, name: str):
    value = _validate.float_array(value, name)
    if value.ndim:
        raise ValueError(f"`{name}` must be a scalar, got shape {value.shape}.")
    return value


def _batch(inputs, name: str):
    return _validate.float_array(inputs, name, min_ndim=1)


def _squared_norms(x):
    """``sum x^2`` over every axis but the first (the batch)."""
    return jnp.sum(jnp.square(x), axis=tuple(range(1, x.ndim)))


def _logits(apply_fn, params, inputs):
    logits = _validate.float_array(apply_fn(params, inputs), "apply_fn(params, inputs)")
    if logits.ndim != 2 or logits.shape[0] != inputs.shape[0]:
        raise ValueError(f"`apply_fn` must return logits [B, K] with B = {inputs.shape[0]}, "
                         f"got shape {logits.shape}.")
    return logits


def _kl(q_logits, p_logits):
    """``KL(softmax(q) || softmax(p))`` per row."""
    log_q = jax.nn.log_softmax(q_logits, axis=-1)
    return jnp.sum(jnp.exp(log_q) * (log_q - jax.nn.log_softmax(p_logits, axis=-1)), axis=-1)


def _normalize(d):
    """vat_tf's ``get_normalized_vector``: per example, divide by ``1e-12 + max |d|``, then by
    ``sqrt(1e-6 + sum d^2)``."""
    axes = tuple(range(1, d.ndim))
    d = d / (1e-12 + jnp.max(jnp.abs(d), axis=axes, keepdims=True))
    return d / jnp.sqrt(1e-6 + jnp.sum(jnp.square(d), axis=axes, keepdims=True))


def virtual_adversarial(apply_fn, params, inputs, key, *, strength=1.0, epsilon=8.0, xi=1e-6,
                        num_power_iterations: int = 1,
                        finite_difference: bool = True) -> jax.Array:
    """VAT's local distributional smoothness penalty, ``strength * LDS`` (paper Eqs. 5-6 and
    the power iteration of Eq. 13, as takerum/vat_tf computes them; see the module).

    Args:
        apply_fn: ``apply_fn(params, inputs) -> logits [B, K]``.
        params: the model parameters (gradients flow only through ``p(x + r_adv)``).
        inputs: ``[B, ...]`` (labelled or unlabelled).
        key: PRNG key for the starting direction ``d ~ N(0, I)`` (used as is).
        strength: the weight ``alpha`` of the penalty.
        epsilon: the norm of the adversarial perturbation (vat_tf: 8.0).
        xi: the finite-difference step of the power iteration (vat_tf: 1e-6).
        num_power_iterations: power iterations ``K`` (static; vat_tf: 1; 0: random
            perturbation).
        finite_difference: as vat_tf, take the gradient of the divergence at ``xi * n(d)``
            (static). False: the exact Hessian-vector product at ``r = 0`` (jvp of grad),
            the ``xi -> 0`` limit that the finite difference approximates (Section 3.3); it
            does not suffer float32 cancellation, and ``xi`` then only scales ``d``.

    Returns:
        ``strength * mean_i KL(p(x_i) || p(x_i + r_adv_i))``, a scalar.
    """
    _validate.check_strength(strength)
    _validate.nonnegative(epsilon, "epsilon")
    _validate.positive(xi, "xi")
    num_power_iterations = _validate.static_int(num_power_iterations, "num_power_iterations", low=0)
    params = _float_params(params)
    inputs = _batch(inputs, "inputs")
    strength = _scalar(strength, "strength")
    epsilon = _scalar(epsilon, "epsilon")
    xi = _scalar(xi, "xi")
    clean = jax.lax.stop_gradient(_logits(apply_fn, params, inputs))

    def divergence(perturbation):
        return jnp.mean(_kl(clean, _logits(apply_fn, params, inputs + perturbation)))

    def step(d):
        if finite_difference:
            return jax.grad(divergence)(xi * _normalize(d))
        zero = jnp.zeros_like(inputs)
        return jax.jvp(jax.grad(divergence), (zero,), (xi * _normalize(d),))[1]

    d = jax.random.normal(key, inputs.shape, inputs.dtype)
    for _ in range(num_power_iterations):
        d = jax.lax.stop_gradient(step(d))
    r_adv = epsilon * _normalize(d)
    return strength * divergence(r_adv)


def _input_gradient_norms(apply_fn, params, inputs, output_fn, name):
    """``||grad_x s_i||^2`` per example, ``s = output_fn(apply_fn(params, x))`` ([B]), by one
    VJP of ``sum_i s_i`` (each example's gradient is its row when examples do not interact)."""
    params = _float_params(params)
    inputs = _batch(inputs, name)

    def total(x):
        outputs = apply_fn(params, x)
        if output_fn is None:
            outputs = _validate.float_array(outputs, "apply_fn(params, inputs)", min_ndim=1)
            scores = jnp.sum(outputs.reshape(outputs.shape[0], -1), axis=1)
        else:
            scores = _validate.float_array(output_fn(outputs), "output_fn(outputs)")
        if scores.shape != inputs.shape[:1]:
            raise ValueError(f"`output_fn` must map the outputs to one scalar per example, "
                             f"shape {inputs.shape[:1]}, got {scores.shape}.")
        return jnp.sum(scores)

    return _squared_norms(jax.grad(total)(inputs))


def input_gradient_penalty(apply_fn, params, inputs, *, strength=1.0,
                           output_fn=None) -> jax.Array:
    """``strength * mean_i ||grad_x s(f(x_i))||^2``, the squared norm of an input gradient.

    Args:
        apply_fn: ``apply_fn(params, inputs) -> outputs [B, ...]``.
        params: the model parameters.
        inputs: ``[B, ...]``.
        strength: the penalty's weight.
        output_fn: maps the outputs ``[B, ...]`` to one scalar per example ``[B]`` (e.g. the
            per-example loss or a selected logit); default: the sum of each example's outputs.

    Returns:
        The penalty, a scalar.
    """
    _validate.check_strength(strength)
    strength = _scalar(strength, "strength")
    norms = _input_gradient_norms(apply_fn, params, inputs, output_fn, "inputs")
    return strength * jnp.mean(norms)


def jacobian_penalty(apply_fn, params, inputs, key=None, *, strength=1.0,
                     num_projections: int = 1, exact: bool = False) -> jax.Array:
    """The contractive penalty ``strength * mean_i ||J_f(x_i)||_F^2`` (Alain & Bengio Eq. 3).

    The default estimate is unbiased: ``mean_p ||v_p^T J||^2`` over ``num_projections``
    Rademacher vectors ``v_p`` in output space (one VJP each; variance
    ``2 (||J J^T||_F^2 - sum_k (J J^T)_kk^2) / num_projections``, exact for one output).
    ``exact=True`` takes one VJP per output unit instead (for small outputs).

    Args:
        apply_fn: ``apply_fn(params, inputs) -> outputs [B, ...]``.
        params: the model parameters.
        inputs: ``[B, ...]``.
        key: PRNG key for the projections (unused, may be None, when ``exact``).
        strength: the penalty's weight.
        num_projections: random projections per example (static).
        exact: compute ``||J||_F^2`` exactly (static).

    Returns:
        The penalty, a scalar.
    """
    _validate.check_strength(strength)
    num_projections = _validate.static_int(num_projections, "num_projections", low=1)
    params = _float_params(params)
    inputs = _batch(inputs, "inputs")
    strength = _scalar(strength, "strength")
    outputs, vjp = jax.vjp(lambda x: apply_fn(params, x), inputs)
    if jnp.ndim(outputs) < 1 or outputs.shape[0] != inputs.shape[0]:
        raise ValueError(f"`apply_fn` must return outputs [B, ...] with B = "
                         f"{inputs.shape[0]}, got shape {jnp.shape(outputs)}.")
    if exact:
        size = max(1, outputs[0].size)
        basis = jnp.eye(size, dtype=outputs.dtype).reshape(size, 1, *outputs.shape[1:])
        cotangents = jnp.broadcast_to(basis, (size, *outputs.shape))
    else:
        if key is None:
            raise ValueError("`key` is required for the random projections (exact=False).")
        cotangents = jax.random.rademacher(key, (num_projections, *outputs.shape),
                                           outputs.dtype)
    rows = jax.vmap(lambda v: vjp(v)[0])(cotangents)  # [P, B, ...]: v^T J per example
    per_example = jnp.sum(jax.vmap(_squared_norms)(rows), axis=0)
    if not exact:
        per_example = per_example / num_projections
    return strength * jnp.mean(per_example)


def r1_penalty(apply_fn, params, real_inputs, *, strength=1.0) -> jax.Array:
    """R1: ``strength / 2 * mean_i ||grad_x D(x_i)||^2`` on real samples (``strength`` is
    R3GAN's ``gamma``; see the module for its presets).

    Args:
        apply_fn: the discriminator, ``apply_fn(params, x) -> critics [B]`` (or ``[B, ...]``,
            summed per example as R3GAN's ``Critics.sum()``).
        params: the discriminator's parameters.
        real_inputs: real samples ``[B, ...]``.
        strength: ``gamma``.

    Returns:
        The penalty, a scalar.
    """
    _validate.check_strength(strength)
    strength = _scalar(strength, "strength")
    norms = _input_gradient_norms(apply_fn, params, real_inputs, None, "real_inputs")
    return strength / 2 * jnp.mean(norms)


def r2_penalty(apply_fn, params, fake_inputs, *, strength=1.0) -> jax.Array:
    """R2: ``strength / 2 * mean_i ||grad_x D(x_i)||^2`` on generated samples (pass them
    through ``jax.lax.stop_gradient`` for the discriminator's step, as R3GAN detaches them).

    Args:
        apply_fn: the discriminator, ``apply_fn(params, x) -> critics [B]``.
        params: the discriminator's parameters.
        fake_inputs: generated samples ``[B, ...]``.
        strength: ``gamma``.

    Returns:
        The penalty, a scalar.
    """
    _validate.check_strength(strength)
    strength = _scalar(strength, "strength")
    norms = _input_gradient_norms(apply_fn, params, fake_inputs, None, "fake_inputs")
    return strength / 2 * jnp.mean(norms)


def hessian_trace_penalty(loss_fn, params, key, *, strength=1.0,
                          num_samples: int = 1) -> jax.Array:
    """``strength * tr(H)``, Hutchinson's estimate of the trace of the loss Hessian
    (``E_v[v^T H v]`` over Rademacher ``v``, by Hessian-vector products), differentiable in
    ``params``.

    Args:
        loss_fn: ``loss_fn(params) -> scalar``.
        params: the point at which the Hessian is taken.
        key: PRNG key for the probes.
        strength: the penalty's weight.
        num_samples: probes (static).

    Returns:
        The penalty, a scalar (unbiased for ``strength * tr(H)``).
    """
    _validate.check_strength(strength)
    num_samples = _validate.static_int(num_samples, "num_samples", low=1)
    strength = _scalar(strength, "strength")
    params = _float_params(params)
    return strength * hessian.hessian_trace(loss_fn, params, key, num_samples=num_samples)


def mixup(inputs, targets, key, *, alpha=1.0, num_classes: int | None = None,
          per_example: bool = False):
    """mixup: convex combinations of the batch with a random permutation of itself.

    ``lam ~ Beta(alpha, alpha)`` (``lam = 1``, no mixing, when ``alpha <= 0``, as the official
    code does); ``x~ = lam x + (1 - lam) x[perm]`` and ``y~ = lam y + (1 - lam) y[perm]``.

    Args:
        inputs: ``[B, ...]`` floating (computed and returned in float32 or wider).
        targets: integer labels ``[B]`` (give ``num_classes``) or one-hot / probability
            targets ``[B, K]``.
        key: PRNG key for ``lam`` and the permutation.
        alpha: the Beta distribution's parameter (official default 1.0).
        num_classes: the number of classes, for integer ``targets`` (static).
        per_example: draw one ``lam`` per example instead of one per batch (static).

    Returns:
        ``(mixed_inputs [B, ...], mixed_targets [B, K])``.
    """
    inputs = _batch(inputs, "inputs")
    batch = inputs.shape[0]
    targets = jnp.asarray(targets)
    if jnp.issubdtype(targets.dtype, jnp.integer):
        if num_classes is None:
            raise ValueError("`num_classes` is required with integer `targets`.")
        num_classes = _validate.static_int(num_classes, "num_classes", low=1)
        if targets.shape != (batch,):
            raise ValueError(f"integer `targets` must have shape ({batch},), got "
                             f"{targets.shape}.")
        safe, mask = _validate.class_labels(targets, num_classes, labels_name="targets")
        targets = jnp.where(mask.in_range[:, None],
                            jax.nn.one_hot(safe, num_classes, dtype=inputs.dtype), jnp.nan)
    else:
        targets = _validate.float_array(targets, "targets", min_ndim=2)
        if targets.shape[0] != batch:
            raise ValueError(f"`targets` must have {batch} rows (one per input), got shape "
                             f"{targets.shape}.")
    alpha = _scalar(alpha, "alpha")
    lam_key, perm_key = jax.random.split(key)
    positive = alpha > 0
    concentration = jnp.where(positive, alpha, 1.0).astype(inputs.dtype)
    lam = jax.random.beta(lam_key, concentration, concentration,
                          (batch,) if per_example else (), inputs.dtype)
    lam = jnp.where(positive, lam, 1.0)
    index = jax.random.permutation(perm_key, batch)

    def mix(x):
        weight = lam.reshape(lam.shape + (1,) * (x.ndim - lam.ndim)) if per_example else lam
        return weight * x + (1 - weight) * x[index]

    return mix(inputs), mix(targets.astype(inputs.dtype))
