"""ForkMerge: the greedy merge against a hand-written search, one branch against plain
training with best-epoch selection, a harmful branch merged out, named errors."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxreg import train
from jaxreg.data import epoch_indices


def _data(n=40, flip=False, seed=0):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    x = jax.random.normal(k1, (n, 4))
    y = (x @ jnp.array([1.0, -2.0, 0.5, 1.0]) > 0).astype(jnp.int32)
    return {"x": x, "y": 1 - y if flip else y}


TRAIN, VAL = _data(), _data(seed=1)
WRONG = _data(flip=True)["y"]  # labels that pull toward the opposite classifier


def _objective(params, batch, hparams, key):
    logits = batch["x"] @ params["w"]
    ce = optax.losses.softmax_cross_entropy_with_integer_labels
    return {"main": ce(logits, batch["y"]).mean(), "aux": ce(logits, batch["wrong"]).mean()}


def _validate(params):
    return jnp.mean(jnp.argmax(VAL["x"] @ params["w"], -1) == VAL["y"])


def _train():
    return {**TRAIN, "wrong": WRONG}


def test_merge_search_matches_a_hand_written_greedy_search():
    rng = np.random.default_rng(0)
    thetas = [{"w": jnp.asarray(rng.normal(size=(4, 2)), jnp.float32)} for _ in range(3)]
    scores = [0.5, 0.9, 0.7]
    target = jnp.asarray(rng.normal(size=(4, 2)), jnp.float32)

    def validate(p):  # a smooth score so that intermediate lambdas can win
        return -jnp.sum((p["w"] - target) ** 2)

    alphas = (0.0, 0.5, 1.0, 2.0)
    theta, lambdas = train.merge_search(thetas, scores, validate, alphas)
    # by hand: best branch 1 at 1; branch 2 tries alpha * 1; then branch 0 tries
    # alpha * (1 + l2) / 2
    def merged(l):
        return sum(li * np.asarray(t["w"], np.float64) for li, t in zip(l, thetas)) / sum(l)

    def score(l):
        return -np.sum((merged(l) - np.asarray(target)) ** 2)

    lam, best = [0.0, 1.0, 0.0], score([0.0, 1.0, 0.0])
    for branch, i in ((2, 0), (0, 1)):
        upper, chosen = sum(lam) / (i + 1), 0.0
        for a in alphas:
            lam[branch] = a * upper
            if score(lam) > best + 1e-9:
                best, chosen = score(lam), lam[branch]
        lam[branch] = chosen
    np.testing.assert_allclose(lambdas, np.asarray(lam) / sum(lam), rtol=1e-6)
    np.testing.assert_allclose(theta["w"], merged(lam), rtol=1e-5, atol=1e-6)
    assert np.count_nonzero(lam) >= 2  # the search did mix branches here


def test_one_branch_is_training_with_best_epoch_selection():
    opt = optax.sgd(0.5)
    params = {"w": jnp.zeros((4, 2))}
    result = train.fork_merge(_objective, opt, params, _train(), branch_weights=[{"main": 1.0}],
                              validate=_validate, epochs=4, merge_every=2, batch_size=8)
    step = jax.jit(train.make_step(lambda p, b, h, k: {"main": _objective(p, b, h, k)["main"]},
                                   opt))
    state = train.init_state(params, opt, key=jax.random.PRNGKey(0))
    for start in (0, 2):
        best, best_params = -np.inf, None
        for epoch in range(start, start + 2):
            for index in epoch_indices(0, epoch, 40, 8):
                state, _ = step(state, {k: v[index] for k, v in _train().items()})
            score = float(_validate(state.params))
            if score > best:
                best, best_params = score, state.params
        state = state.replace(params=best_params)
    np.testing.assert_allclose(result.params["w"], state.params["w"], rtol=1e-5, atol=1e-6)
    assert [r["lambdas"] for r in result.rounds] == [[1.0], [1.0]]


def test_a_harmful_branch_is_merged_out():
    kwargs = dict(branch_weights=[{"main": 1.0}, {"main": 1.0, "aux": 3.0}], validate=_validate,
                  epochs=4, merge_every=2, batch_size=8)
    args = (_objective, optax.sgd(0.5), {"w": jnp.zeros((4, 2))}, _train())
    for r in train.fork_merge(*args, **kwargs).rounds:  # finer alphas may mix in a little
        assert r["branch_scores"][0] > r["branch_scores"][1]
        assert r["lambdas"][0] > r["lambdas"][1]
        assert r["merged_score"] >= r["branch_scores"][0]  # the search never loses the best
    for r in train.fork_merge(*args, **kwargs, alphas=(0.0, 1.0)).rounds:  # equal parts hurt
        assert r["lambdas"] == [1.0, 0.0]
        assert r["merged_score"] == pytest.approx(r["branch_scores"][0])


def test_bad_arguments_are_named():
    kwargs = dict(validate=_validate, epochs=2, merge_every=1, batch_size=8)
    args = (_objective, optax.sgd(0.1), {"w": jnp.zeros((4, 2))}, _train())
    for bad, match in (({"branch_weights": []}, "`branch_weights` is empty"),
                       ({"branch_weights": [{}]}, "`branch_weights` must be non-empty"),
                       ({"branch_weights": [{"main": 1}], "merge_every": 0}, "`merge_every`"),
                       ({"branch_weights": [{"main": 1}], "alphas": ()}, "`alphas` is empty")):
        with pytest.raises(ValueError, match=match):
            train.fork_merge(*args, **{**kwargs, **bad})
    with pytest.raises(KeyError, match="`branch_weights` name terms \\['typo'\\]"):
        train.fork_merge(*args, branch_weights=[{"typo": 1.0}], **kwargs)
    with pytest.raises(ValueError, match="positive sum"):
        train.fork_merge.__globals__["weighted_params"]([{"w": jnp.ones(2)}], [0.0])


def test_two_helpful_branches_merge_at_least_as_well_as_the_best():
    result = train.fork_merge(_objective, optax.sgd(0.2), {"w": jnp.zeros((4, 2))}, _train(),
                              branch_weights=[{"main": 1.0}, {"main": 2.0}],
                              validate=_validate, epochs=2, merge_every=1, batch_size=8)
    for r in result.rounds:
        assert r["merged_score"] >= max(r["branch_scores"]) - 1e-9
    assert list(itertools.chain(*[r["epochs"] for r in result.rounds])) == [0, 1, 1, 2]
