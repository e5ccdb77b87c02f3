"""How good a frozen representation is: a linear probe, a weighted kNN, and collapse.

* ``linear_probe``: multinomial logistic regression on frozen, standardized features (the
  linear evaluation protocol of SimCLR, Chen et al. 2020, arXiv 2002.05709, Sec. 4 and
  Appendix B.6), trained full-batch with Adam for a fixed number of steps.
* ``knn_accuracy``: the weighted k-nearest-neighbour classifier on cosine similarity of Wu et
  al. 2018, "Unsupervised Feature Learning via Non-Parametric Instance Discrimination", arXiv
  1805.01978, Sec. 3.4 (k = 200, tau = 0.07 there; DINO uses k = 20), votes weighted by
  ``exp(s / tau)``.
* ``normalized_std``: SimSiam's collapse measure (Chen & He 2021, arXiv 2011.10566, Sec. 4.1,
  Fig. 2): the per-dimension standard deviation of the L2-normalized outputs, averaged over
  dimensions; 0 for a collapsed representation, about ``1/sqrt(d)`` for an isotropic one.
* ``effective_rank``: RankMe (Garrido et al. 2023, "RankMe: Assessing the Downstream
  Performance of Pretrained Self-Supervised Representations by Their Rank", arXiv
  2210.02885, Eq. 1; the effective rank of Roy & Vetterli 2007), which also sees dimensional
  collapse: 1 for outputs on a line, ``d`` for singular values all equal. ``center=True``
  takes it of the centred outputs, i.e. of the covariance spectrum, as Jing et al. 2022
  ("Understanding Dimensional Collapse in Contrastive Self-supervised Learning", arXiv
  2110.09348) do: for losses that ignore the outputs' mean (Barlow Twins, VICReg) an
  arbitrary mean would otherwise read as collapse.

All are pure and jittable, so one call can ``vmap`` over the seeds of a grid.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxreg._validate import float_array


def _features_and_labels(features, labels, name):
    features = float_array(features, name, min_ndim=2)
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer) or labels.shape != features.shape[:1]:
        raise ValueError(f"the labels of `{name}` must be integers of shape "
                         f"{features.shape[:1]}, got {labels.dtype} {labels.shape}.")
    return features, labels


def linear_probe(train_features, train_labels, test_features, test_labels, num_classes: int,
                 *, steps: int = 500, learning_rate=1e-2, weight_decay=1e-4) -> jax.Array:
    """Test accuracy of a softmax classifier trained on frozen features.

    The features are standardized with the training split's mean and standard deviation;
    the classifier minimizes the mean cross-entropy plus ``weight_decay/2 ||W||^2`` by
    full-batch Adam for ``steps`` steps from zero weights (a convex problem, so the result
    does not depend on a seed)."""
    x, y = _features_and_labels(train_features, train_labels, "train_features")
    x_test, y_test = _features_and_labels(test_features, test_labels, "test_features")
    mean, std = jnp.mean(x, axis=0), jnp.std(x, axis=0) + 1e-6
    x, x_test = (x - mean) / std, (x_test - mean) / std
    params = (jnp.zeros((x.shape[1], num_classes), x.dtype), jnp.zeros(num_classes, x.dtype))
    optimizer = optax.adam(learning_rate)

    def loss(params):
        w, b = params
        ce = optax.losses.softmax_cross_entropy_with_integer_labels(x @ w + b, y).mean()
        return ce + 0.5 * weight_decay * jnp.sum(w * w)

    def step(carry, _):
        params, opt_state = carry
        updates, opt_state = optimizer.update(jax.grad(loss)(params), opt_state)
        return (optax.apply_updates(params, updates), opt_state), None

    ((w, b), _), _ = jax.lax.scan(step, (params, optimizer.init(params)), None, length=steps)
    return jnp.mean(jnp.argmax(x_test @ w + b, axis=-1) == y_test)


def knn_accuracy(train_features, train_labels, test_features, test_labels, num_classes: int,
                 *, k: int = 20, temperature=0.07) -> jax.Array:
    """Test accuracy of the weighted kNN vote on cosine similarity: each test point takes
    the class with the largest ``sum exp(s / temperature)`` over its ``k`` most similar
    training points."""
    x, y = _features_and_labels(train_features, train_labels, "train_features")
    x_test, y_test = _features_and_labels(test_features, test_labels, "test_features")
    if not 1 <= k <= x.shape[0]:
        raise ValueError(f"`k` must be in [1, {x.shape[0]}] (the training points), got {k}.")
    unit = lambda f: f / jnp.maximum(jnp.linalg.norm(f, axis=-1, keepdims=True), 1e-12)
    similarity, index = jax.lax.top_k(unit(x_test) @ unit(x).T, k)
    votes = jax.nn.one_hot(y[index], num_classes) * jnp.exp(
        (similarity - 1.0) / temperature)[..., None]  # shifted by the largest possible s
    return jnp.mean(jnp.argmax(votes.sum(axis=1), axis=-1) == y_test)


def normalized_std(outputs) -> jax.Array:
    """``mean_d std_n (z_n / ||z_n||)_d``: 0 when every output points the same way."""
    z = float_array(outputs, "outputs", min_ndim=2)
    z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
    return jnp.mean(jnp.std(z, axis=0))


def effective_rank(outputs, *, center: bool = False, eps=1e-7) -> jax.Array:
    """RankMe: ``exp(-sum_k p_k log p_k)`` with ``p_k = sigma_k / ||sigma||_1 + eps`` over the
    singular values ``sigma`` of ``outputs [n, d]`` (not centred, as the paper, unless
    ``center``)."""
    z = float_array(outputs, "outputs", min_ndim=2)
    if center:
        z = z - jnp.mean(z, axis=0)
    sigma = jnp.linalg.svd(z, compute_uv=False)
    p = sigma / jnp.maximum(jnp.sum(sigma), jnp.finfo(z.dtype).tiny) + eps
    return jnp.exp(-jnp.sum(p * jnp.log(p)))
