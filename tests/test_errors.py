"""Bad input raises a clear error that names the argument, at construction or trace time."""

import jax.numpy as jnp
import optax
import pytest

import jaxreg

P = {"Dense_0": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}}


@pytest.mark.parametrize(
    ("make", "arg"),
    [
        (lambda: jaxreg.add_l2_decay(-0.1), "weight_decay"),
        (lambda: jaxreg.coupled_weight_decay(optax.sgd(0.1), -1.0), "weight_decay"),
        (lambda: jaxreg.decoupled_weight_decay(optax.sgd(0.1), 0.1, -1e-3), "learning_rate"),
        (lambda: jaxreg.independent_weight_decay(optax.sgd(0.1), float("nan")), "weight_decay"),
        (lambda: jaxreg.prox_l1(-1.0, 0.1), "strength"),
        (lambda: jaxreg.prox_l1(1.0, -0.1), "learning_rate"),
        (lambda: jaxreg.prox_group_lasso(-1.0, 0.1), "strength"),
        (lambda: jaxreg.keep_max_norm(-2.0), "max_value"),
        (lambda: jaxreg.keep_min_max_norm(-1.0, 1.0), "min_value"),
        (lambda: jaxreg.clip_by_global_norm(-1.0), "max_norm"),
        (lambda: jaxreg.clip_by_unit_norm(-1.0), "max_norm"),
        (lambda: jaxreg.adaptive_grad_clip(-0.01), "clipping"),
    ],
)
def test_negative_strengths(make, arg):
    with pytest.raises(ValueError, match=rf"^{arg} must be >= 0"):
        make()


@pytest.mark.parametrize(
    ("make", "arg"),
    [
        (lambda: jaxreg.keep_min_max_norm(0.0, 1.0, rate=1.5), "rate"),
        (lambda: jaxreg.keep_min_max_norm(0.0, 1.0, rate=-0.1), "rate"),
        (lambda: jaxreg.prox_elastic_net(1.0, 0.1, l1_ratio=2.0), "l1_ratio"),
        (lambda: jaxreg.elastic_net_penalty(P, l1_ratio=-0.5), "l1_ratio"),
    ],
)
def test_rates_outside_unit_interval(make, arg):
    with pytest.raises(ValueError, match=rf"^{arg} must lie in \[0, 1\]"):
        make()


def test_min_above_max():
    with pytest.raises(ValueError, match="min_value must be <= max_value"):
        jaxreg.keep_min_max_norm(2.0, 1.0)


@pytest.mark.parametrize(
    "make",
    [
        lambda a: jaxreg.keep_max_norm(1.0, axis=a),
        lambda a: jaxreg.prox_group_lasso(1.0, 0.1, axis=a),
        lambda a: jaxreg.clip_by_unit_norm(1.0, axis=a),
    ],
)
def test_axis_out_of_range_names_axis_and_path(make):
    tx = make(2)
    with pytest.raises(
        ValueError, match=r"axis=2 is out of range for the parameter at 'Dense_0/\w+'"
    ):
        tx.update(P, tx.init(P), P)
    with pytest.raises(ValueError, match="axis must be one of"):
        make("columns")
    with pytest.raises(TypeError, match=r"axis must hold Python ints.*static_args"):
        make((0, 1.0))


def test_penalty_bad_arguments():
    with pytest.raises(ValueError, match=r"axis=5 is out of range"):
        jaxreg.group_lasso_penalty(P, axis=5)
    with pytest.raises(ValueError, match="mode must be 'columns' or 'rows'"):
        jaxreg.orthogonal_penalty(P, mode="diag")
    with pytest.raises(ValueError, match="n_iter must be a Python int >= 1"):
        jaxreg.spectral_penalty(P, n_iter=0)
    with pytest.raises(ValueError, match=r"mask does not match.*'Dense_0/bias'"):
        jaxreg.l2_penalty(P, mask={"Dense_0": {"kernel": True}})


@pytest.mark.parametrize(
    "make",
    [
        lambda: jaxreg.add_l2_decay(0.1),
        lambda: jaxreg.decoupled_weight_decay(optax.sgd(0.1), 0.1, 0.1),
        lambda: jaxreg.independent_weight_decay(optax.sgd(0.1), 0.1),
        lambda: jaxreg.prox_l1(0.1, 0.1),
        lambda: jaxreg.prox_elastic_net(0.1, 0.1),
        lambda: jaxreg.prox_group_lasso(0.1, 0.1),
        lambda: jaxreg.keep_max_norm(1.0),
        lambda: jaxreg.keep_unit_norm(),
        lambda: jaxreg.keep_min_max_norm(),
        lambda: jaxreg.keep_non_negative(),
        lambda: jaxreg.adaptive_grad_clip(0.1),
    ],
)
def test_transforms_that_need_params_say_so(make):
    tx = make()
    with pytest.raises(ValueError, match=r"needs the current parameters.*params=None"):
        tx.update(P, tx.init(P))


def test_non_numeric_hyperparameters_are_rejected():
    with pytest.raises(TypeError, match="weight_decay must be a number, an array or a schedule"):
        jaxreg.add_l2_decay("0.1")
    with pytest.raises(TypeError, match="strength must be a number"):
        jaxreg.prox_l1(None, 0.1)
    with pytest.raises(TypeError, match=r"inner must be an optax\.GradientTransformation"):
        jaxreg.skip_non_finite(lambda g: g)
