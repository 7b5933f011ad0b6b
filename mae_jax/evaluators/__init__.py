"""Evaluators: `Evaluator.run(params, step) -> metrics`, looked up by name.

Importing the modules below registers them.
"""

from mae_jax.evaluators import (  # registers
    attentive_probe, classification, knn, linear_probe, reconstruction)
from mae_jax.evaluators.base import (EVALUATORS, EvalContext, Evaluator,
                                     FeatureEvaluator, build, check_config,
                                     check_data, register)
