"""Device mesh from config, logical-axis rules, and sharded placement.

The model names logical axes ('batch', 'embed', 'mlp', 'heads', ...). The
config names the mesh (`config.mesh`: sizes of the dcn, data, fsdp and tensor
axes) and the rules that map logical axes to mesh axes
(`config.sharding.rules`). Everything here turns those two into
NamedShardings; no other module mentions a mesh axis.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Any, Iterable, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

# Slowest-varying first: 'dcn' spans slices (data-center network), the others
# live inside a slice (ICI / NVLink).
MESH_AXES = ('dcn', 'data', 'fsdp', 'tensor')

# logical axis -> mesh axes. Logical axes not listed are replicated.
DEFAULT_RULES = (
    ('batch', ('dcn', 'data', 'fsdp')),  # activations and data: every data-like axis
    ('embed', 'fsdp'),                   # parameters: ZeRO-3 style over fsdp
    ('mlp', 'tensor'),                   # Megatron-style tensor parallelism
    ('heads', 'tensor'),
)

Rules = Sequence[tuple[str, str | Sequence[str] | None]]


def mesh_shape(mesh_config: Any, num_devices: int) -> dict[str, int]:
  """Resolves config.mesh (one size may be -1 = the rest) against the devices."""
  sizes = {a: int(mesh_config.get(a, 1)) for a in MESH_AXES}
  unknown = set(mesh_config.keys()) - set(MESH_AXES)
  if unknown:
    raise ValueError(f'config.mesh has unknown axes {sorted(unknown)}; '
                     f'allowed {list(MESH_AXES)}')
  bad = [a for a, s in sizes.items() if s == 0 or s < -1]
  if bad:
    raise ValueError(f'config.mesh.{bad[0]}={sizes[bad[0]]}: sizes must be '
                     'positive or -1 (= all remaining devices)')
  free = [a for a, s in sizes.items() if s == -1]
  if len(free) > 1:
    raise ValueError(f'config.mesh: only one axis may be -1, got {free}')
  known = math.prod(s for s in sizes.values() if s != -1)
  if free:
    if num_devices % known:
      raise ValueError(f'config.mesh: {num_devices} devices are not divisible '
                       f'by the fixed axes {sizes} (product {known})')
    sizes[free[0]] = num_devices // known
  if math.prod(sizes.values()) != num_devices:
    raise ValueError(f'config.mesh {sizes} needs {math.prod(sizes.values())} '
                     f'devices but {num_devices} are available')
  return sizes


def make_mesh(mesh_config: Any, devices: Sequence[jax.Device] | None = None
              ) -> Mesh:
  """A Mesh with axes MESH_AXES and Auto axis types.

  Auto (not Explicit) axes: explicit axes reject FSDP-style parameter specs on
  contracting dimensions in current jax.
  """
  devices = list(devices if devices is not None else jax.devices())
  sizes = mesh_shape(mesh_config, len(devices))
  shape = tuple(sizes[a] for a in MESH_AXES)
  if sizes['dcn'] > 1 and getattr(devices[0], 'slice_index', None) is not None:
    from jax.experimental import mesh_utils  # pylint: disable=g-import-not-at-top
    ici = (1, *shape[1:])
    dcn = (sizes['dcn'], 1, 1, 1)
    grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))
  return jax.make_mesh(shape, MESH_AXES, devices=devices,
                       axis_types=(AxisType.Auto,) * len(MESH_AXES))


def _as_tuple(axes) -> tuple[str, ...]:
  if axes is None:
    return ()
  return (axes,) if isinstance(axes, str) else tuple(axes)


def validate_rules(rules: Rules) -> None:
  for i, rule in enumerate(rules):
    if len(rule) != 2 or not isinstance(rule[0], str):
      raise ValueError(f'config.sharding.rules[{i}]={rule!r}: expected '
                       '(logical_axis, mesh_axis or tuple of mesh axes)')
    for a in _as_tuple(rule[1]):
      if a not in MESH_AXES:
        raise ValueError(f'config.sharding.rules[{i}]={rule!r}: mesh axis '
                         f'{a!r} is not one of {list(MESH_AXES)}')


def logical_to_spec(logical: Iterable[str | None], rules: Rules, mesh: Mesh,
                    shape: Sequence[int] | None = None) -> P:
  """Maps logical axis names to a PartitionSpec on `mesh`.

  A mesh axis is used at most once per array (first dimension wins), axes of
  size 1 are dropped, and with `shape` given only as many mesh axes are kept as
  evenly divide the dimension (the rest stay replicated, and
  check_sufficiently_sharded reports it for large parameters).
  """
  table = {name: _as_tuple(axes) for name, axes in reversed(list(rules))}
  used: set[str] = set()
  spec = []
  for dim, name in enumerate(logical):
    chosen: list[str] = []
    for a in table.get(name, ()) if name else ():
      if a in used or mesh.shape[a] == 1:
        continue
      size = math.prod(mesh.shape[c] for c in chosen) * mesh.shape[a]
      if shape is not None and shape[dim] % size:
        break
      chosen.append(a)
    used.update(chosen)
    spec.append(None if not chosen else chosen[0] if len(chosen) == 1
                else tuple(chosen))
  while spec and spec[-1] is None:
    spec.pop()
  return P(*spec)


_CONTEXT: contextvars.ContextVar[tuple[Mesh, Rules] | None] = (
    contextvars.ContextVar('mae_jax_sharding', default=None))


@contextlib.contextmanager
def rules_context(mesh: Mesh, rules: Rules):
  """Makes `constrain` active while functions are traced inside the block."""
  token = _CONTEXT.set((mesh, tuple(rules)))
  try:
    yield
  finally:
    _CONTEXT.reset(token)


def constrain(x: jax.Array, logical: Sequence[str | None]) -> jax.Array:
  """Sharding constraint on an activation by logical axes; no-op outside
  rules_context (e.g. eager use through the Python API)."""
  ctx = _CONTEXT.get()
  if ctx is None:
    return x
  mesh, rules = ctx
  spec = logical_to_spec(logical, rules, mesh, x.shape)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def tree_shardings(logical_tree, abstract_tree, mesh: Mesh, rules: Rules):
  """NamedSharding per leaf from a tree of logical PartitionSpecs."""
  return jax.tree.map(
      lambda spec, x: NamedSharding(
          mesh, logical_to_spec(tuple(spec), rules, mesh, x.shape)),
      logical_tree, abstract_tree,
      is_leaf=lambda s: isinstance(s, P))


def batch_sharding(mesh: Mesh, rules: Rules, ndim: int) -> NamedSharding:
  """Sharding of a [B, ...] data array: batch over the data-like axes."""
  spec = logical_to_spec(('batch',) + (None,) * (ndim - 1), rules, mesh)
  return NamedSharding(mesh, spec)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_sufficiently_sharded(shardings, abstract_tree, mesh: Mesh,
                               min_bytes: int) -> None:
  """Fails, naming the parameter, when a large one is fully replicated although
  the mesh has model-parallel (fsdp/tensor) axes to shard it over."""
  if mesh.shape['fsdp'] * mesh.shape['tensor'] == 1 or min_bytes <= 0:
    return
  flat = jax.tree_util.tree_flatten_with_path(abstract_tree)[0]
  shards = jax.tree.leaves(shardings)
  for (path, x), s in zip(flat, shards):
    nbytes = math.prod(x.shape) * np.dtype(x.dtype).itemsize
    if nbytes >= min_bytes and s.is_fully_replicated:
      name = jax.tree_util.keystr(path, simple=True, separator='/')
      raise ValueError(
          f'parameter {name} {tuple(x.shape)} ({nbytes:,} bytes) would '
          f'be replicated on every device of mesh {dict(mesh.shape)}: no rule '
          f'in config.sharding.rules shards any of its dimensions evenly. Add '
          f'a rule, change the mesh, or raise '
          f'config.sharding.min_sharded_bytes (now {min_bytes}).')


def to_global(local: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """This process's slice of a batch [b, ...] -> the global jax.Array [B, ...]."""
  return jax.make_array_from_process_local_data(sharding, local)
