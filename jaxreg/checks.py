"""Debug mode for the value checks that cannot run at trace time.

jaxreg checks shapes, dtypes and concrete values eagerly (see ``jaxreg._validate``). What it
cannot check while tracing, a traced integer label outside ``[0, K)``, gives a NaN loss for
that example (never a finite value). Under :func:`debug_checks` the same range check is also
emitted with ``jax.experimental.checkify.check``::

    from jax.experimental import checkify
    from jaxreg.checks import debug_checks

    with debug_checks():
        err, loss = checkify.checkify(jax.jit(loss_fn))(logits, labels)
    err.throw()  # ValueError: `labels` must hold class indices in [0, K) ..., got 7.

Outside it no checkify operation is emitted and ``jax.jit`` works as usual.
"""

from jaxreg._validate import debug_checks, debug_checks_enabled

__all__ = ["debug_checks", "debug_checks_enabled"]
