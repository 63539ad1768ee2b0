"""optax ``GradientTransformation``s: weight decay, proximal steps, constraints, clipping."""

from jaxreg.transforms.clipping import (
    ClipByGlobalNormState,
    ClipByUnitNormState,
    SkipNonFiniteState,
    adaptive_grad_clip,
    clip_by_global_norm,
    clip_by_leaf_norm,
    clip_by_unit_norm,
    global_norm,
    skip_non_finite,
)
from jaxreg.transforms.constraints import (
    KeepMaxNormState,
    KeepMinMaxNormState,
    keep_max_norm,
    keep_min_max_norm,
    keep_non_negative,
    keep_unit_norm,
)
from jaxreg.transforms.decay import (
    AddL2DecayState,
    WeightDecayState,
    add_l2_decay,
    coupled_weight_decay,
    decoupled_weight_decay,
    independent_weight_decay,
)
from jaxreg.transforms.proximal import (
    ProxElasticNetState,
    ProxGroupLassoState,
    ProxL1State,
    prox_elastic_net,
    prox_group_lasso,
    prox_l1,
    soft_threshold,
)

__all__ = [
    "AddL2DecayState",
    "ClipByGlobalNormState",
    "ClipByUnitNormState",
    "KeepMaxNormState",
    "KeepMinMaxNormState",
    "ProxElasticNetState",
    "ProxGroupLassoState",
    "ProxL1State",
    "SkipNonFiniteState",
    "WeightDecayState",
    "adaptive_grad_clip",
    "add_l2_decay",
    "clip_by_global_norm",
    "clip_by_leaf_norm",
    "clip_by_unit_norm",
    "coupled_weight_decay",
    "decoupled_weight_decay",
    "global_norm",
    "independent_weight_decay",
    "keep_max_norm",
    "keep_min_max_norm",
    "keep_non_negative",
    "keep_unit_norm",
    "prox_elastic_net",
    "prox_group_lasso",
    "prox_l1",
    "skip_non_finite",
    "soft_threshold",
]
