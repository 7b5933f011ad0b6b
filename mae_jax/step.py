"""The train state, the loss and the one jitted train step.

The model is a flax NNX module, but what crosses jit is plain data: a static
`graphdef` (the module's structure) and a pure dict of parameter arrays.
`nnx.merge(graphdef, params)` rebuilds the module inside the traced function,
so every jitted function here is pure.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from mae_jax import config as config_lib
from mae_jax import masking, sharding, targets
from mae_jax.models import mae


@flax.struct.dataclass
class TrainState:
  step: jax.Array   # int32 [], number of updates applied
  params: Any       # pure dict of float32 arrays
  opt_state: Any


def loss_terms(model: mae.MAE, images: jax.Array, mask: masking.Mask,
               target: str) -> dict[str, jax.Array]:
  """images: [B, *S, C] -> named scalar loss terms; the loss is their sum.

  'reconstruction': the mean over the tokens the encoder did not see (and
  the decoder predicted) of the per-token squared error to the target; a
  masking strategy may add its own terms (adaptive masking: 'sampler').
  """
  pred, patches = model(images, mask)
  error, weight = targets.token_error(
      pred, targets.get(target)(patches, model.channels), mask)
  terms = {'reconstruction': jnp.sum(error * weight) / jnp.sum(weight)}
  strategy = model.strategy
  if strategy.loss is not None:
    terms.update(strategy.loss(model, patches, mask, error, weight,
                               model.mask_options))
  return terms


def _task_loss(params, graphdef, task, inputs: tuple, rng: jax.Array
               ) -> tuple[jax.Array, dict]:
  """-> (scalar loss, its named terms) of `task` (tasks.py) on `inputs`."""
  terms = task.loss(nnx.merge(graphdef, params), inputs, rng)
  return sum(terms.values()), terms


def _micro_batches(tree, k: int):
  """[B, ...] leaves -> [k, B/k, ...]; micro-batch i takes rows i, i+k, ...

  Strided rather than contiguous: the batch axis is sharded over devices, so
  every micro-batch keeps a slice on every device.
  """
  return jax.tree.map(
      lambda a: jnp.swapaxes(a.reshape(a.shape[0] // k, k, *a.shape[1:]), 0, 1),
      tree)


def make_train_step(graphdef, tx: optax.GradientTransformation,
                    lr: optax.Schedule, task, grad_accum_steps: int = 1
                    ) -> Callable:
  """Returns train_step(state, batch, rng) -> (state, metrics).

  task: a tasks.Task, or a target name for pretraining with it. The task
  prepares its inputs from the batch (the mask, augmentations) outside the
  gradient, then its loss is differentiated. With grad_accum_steps = k > 1
  the inputs are processed as k micro-batches (lax.scan, gradients summed in
  float32): the same update as one big batch, in 1/k of the activation
  memory.
  """
  from mae_jax import tasks  # pylint: disable=g-import-not-at-top (cycle)
  if isinstance(task, str):
    task = tasks.pretraining(task)
  grad_fn = jax.value_and_grad(_task_loss, has_aux=True)

  def train_step(state: TrainState, batch: dict, rng: jax.Array):
    # One key per step, independent of restarts: same step, same masks.
    rng = jax.random.fold_in(rng, state.step)
    inputs = task.prepare(nnx.merge(graphdef, state.params), batch, rng)
    if grad_accum_steps == 1:
      (loss, terms), grads = grad_fn(state.params, graphdef, task, inputs,
                                     jax.random.fold_in(rng, 1))
    else:
      def accumulate(carry, micro):
        i, micro_inputs = micro
        (loss, terms), grads = grad_fn(state.params, graphdef, task,
                                       micro_inputs,
                                       jax.random.fold_in(rng, 1 + i))
        return jax.tree.map(jnp.add, carry, (loss, terms, grads)), None

      (loss, terms), grads = jax.eval_shape(
          lambda p, x: grad_fn(p, graphdef, task, x, rng), state.params,
          inputs)
      zeros = jax.tree.map(jnp.zeros_like, (loss, terms, grads))
      (loss, terms, grads), _ = jax.lax.scan(
          accumulate, zeros, (jnp.arange(grad_accum_steps),
                              _micro_batches(inputs, grad_accum_steps)))
      # Every example weighs the same in every micro-batch (the same number
      # of masked patches), so the mean of the micro-batch losses is the
      # full-batch loss.
      loss, terms, grads = jax.tree.map(lambda x: x / grad_accum_steps,
                                        (loss, terms, grads))
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {'loss': loss, 'grad_norm': optax.tree.norm(grads),
               'learning_rate': lr(state.step),
               **{f'loss/{name}': value for name, value in terms.items()}}
    return TrainState(state.step + 1, params, opt_state), metrics

  return train_step


class StateSetup:
  """Abstract model -> logical specs -> shardings -> jitted, sharded init.

  Nothing is materialized before its sharding is known, so the full model
  never has to fit on one device (big_vision / maxtext pattern).
  """

  def __init__(self, config: ml_collections.ConfigDict,
               tx: optax.GradientTransformation, mesh: jax.sharding.Mesh):
    from mae_jax import tasks  # pylint: disable=g-import-not-at-top (cycle)
    self.config, self.tx, self.mesh = config, tx, mesh
    self.task = tasks.get(config)
    rules = config.sharding.rules
    abstract_model = nnx.eval_shape(lambda: self.task.build(config,
                                                            nnx.Rngs(0)))
    self.graphdef, abstract_params = nnx.split(abstract_model)
    logical = nnx.to_pure_dict(nnx.get_partition_spec(abstract_params))
    self.abstract_params = nnx.to_pure_dict(abstract_params)
    param_sh = sharding.tree_shardings(logical, self.abstract_params, mesh, rules)
    try:
      sharding.check_sufficiently_sharded(
          param_sh, self.abstract_params, mesh,
          config.sharding.min_sharded_bytes)
    except ValueError as e:
      raise config_lib.ConfigError(str(e)) from None
    abstract = jax.eval_shape(self._init, jax.random.key(0))
    repl = sharding.replicated(mesh)
    opt_sh = optax.tree_map_params(
        tx, lambda _, s: s, abstract.opt_state, param_sh,
        transform_non_params=lambda _: repl,
        is_leaf=lambda x: isinstance(x, jax.sharding.NamedSharding))
    self.shardings = TrainState(step=repl, params=param_sh, opt_state=opt_sh)
    self.abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        abstract, self.shardings)
    multi = config.data.multi_label  # labels multi-hot [B, K]
    ndim = {'image': 1 + len(config_lib.input_shape(config)),
            'label': 2 if multi else 1}
    self.batch_shardings = {k: sharding.batch_sharding(mesh, rules, ndim[k])
                            for k in self.task.batch_keys}

  def batch_spec(self, batch_size: int) -> dict:
    """The abstract global batch the step reads: 'image' float32
    [B, *input_shape] and, for fine-tuning, 'label' int32 [B] (multi-label:
    float32 [B, K])."""
    d = self.config.data
    shapes = {'image': ((batch_size, *config_lib.input_shape(self.config)),
                        jnp.float32),
              'label': (((batch_size, d.num_classes), jnp.float32)
                        if d.multi_label else ((batch_size,), jnp.int32))}
    return {k: jax.ShapeDtypeStruct(*shapes[k], sharding=s)
            for k, s in self.batch_shardings.items()}

  def _init_params(self, key: jax.Array):
    model = self.task.build(self.config, nnx.Rngs(params=key))
    return nnx.to_pure_dict(nnx.state(model))

  def _init(self, key: jax.Array) -> TrainState:
    params = self._init_params(key)
    return TrainState(jnp.zeros((), jnp.int32), params, self.tx.init(params))

  def init(self, key: jax.Array) -> TrainState:
    return jax.jit(self._init, out_shardings=self.shardings)(key)

  def init_params(self, key: jax.Array):
    """Parameters only (e.g. the random-init baseline of the evaluators)."""
    return jax.jit(self._init_params, out_shardings=self.shardings.params)(key)

  def train_step(self, lr: optax.Schedule, *, donate: bool = True
                 ) -> Callable:
    """make_train_step jitted with this state's and the batch's shardings;
    the state is donated (its buffers are reused for the new state)."""
    fn = make_train_step(self.graphdef, self.tx, lr, self.task,
                         self.config.grad_accum_steps)
    repl = sharding.replicated(self.mesh)
    return jax.jit(fn, in_shardings=(self.shardings, self.batch_shardings, repl),
                   out_shardings=(self.shardings, repl),
                   donate_argnums=(0,) if donate else ())
