"""Device mesh and shardings; the two ways of running a step on many devices: ``jit`` and ``pmap``.

``jit`` (the default) places the global batch on a ``(data, fsdp)`` mesh. Parameters and optimizer state are
replicated over ``data`` and, when the ``fsdp`` axis is larger than 1, split along ``fsdp`` on their largest
divisible dimension, so each device holds a 1/fsdp share. ``pmap`` keeps one replica per local device and
averages gradients with ``pmean``, for code written in that style. Checkpoints use the jit layout in both cases,
so a run can switch between them.
"""

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import flax.jax_utils
import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from vitjax.errors import ConfigError

DATA_AXIS, FSDP_AXIS = "data", "fsdp"
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)
PMAP_AXIS = "batch"


def make_mesh(*, fsdp: int = 1, devices: list[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp) mesh over all global devices, with ``Auto`` axis types; ``fsdp=-1`` shards over all."""
  devices = jax.devices() if devices is None else devices
  fsdp = len(devices) if fsdp == -1 else fsdp
  if fsdp < 1 or len(devices) % fsdp:
    raise ConfigError(f"config.mesh.fsdp={fsdp} must divide the device count {len(devices)} (or be -1 for all).")
  return Mesh(np.asarray(devices).reshape(len(devices) // fsdp, fsdp), BATCH_AXES)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Shards the leading (batch) axis over every device of the mesh."""
  return NamedSharding(mesh, P(BATCH_AXES))


def fsdp_spec(shape: tuple[int, ...], fsdp_size: int) -> P:
  """Splits the largest dimension that ``fsdp_size`` divides over the fsdp axis; replicates small arrays."""
  if fsdp_size == 1:
    return P()
  candidates = [(size, axis) for axis, size in enumerate(shape) if size % fsdp_size == 0]
  if not candidates:
    return P()
  _, axis = max(candidates)
  return P(*([None] * axis + [FSDP_AXIS]))


def state_sharding(mesh: Mesh, abstract_state: Any) -> Any:
  """A NamedSharding for every array of the (abstract) train state."""
  fsdp_size = mesh.shape[FSDP_AXIS]
  return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(x.shape, fsdp_size)), abstract_state)


def check_batch_size(batch_size: int, *, name: str = "batch_size") -> None:
  """Fails early, naming the fix, when a global batch cannot be split evenly over devices and processes."""
  devices, processes = jax.device_count(), jax.process_count()
  if batch_size <= 0 or batch_size % devices:
    raise ConfigError(
      f"config.{name}={batch_size} must be a positive multiple of the device count {devices}; "
      f"use e.g. {max(1, round(batch_size / devices)) * devices}."
    )
  if batch_size % processes:
    raise ConfigError(f"config.{name}={batch_size} must divide by the process count {processes}.")


def first_process_first(fn: Callable[[], Any]) -> None:
  """Runs `fn` on process 0, then on every other process: processes sharing a disk don't race (dataset
  preparation), and the others find the work done."""
  if jax.process_index() == 0:
    fn()
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(getattr(fn, "__name__", "first_process_first"))
    fn()


def mesh_from_config(config: ml_collections.ConfigDict) -> Mesh:
  """The run's mesh, after checking that `config.parallelism` exists and that both batch sizes (and the
  accumulation microbatches) divide evenly over devices and processes."""
  if config.parallelism not in PARALLELISM:
    raise ConfigError(f"Unknown parallelism {config.parallelism!r}; choose one of: {', '.join(PARALLELISM)}.")
  check_batch_size(config.batch_size)
  check_batch_size(config.eval_batch_size, name="eval_batch_size")
  if config.accum_steps < 1 or config.batch_size % (jax.device_count() * config.accum_steps):
    raise ConfigError(
      f"config.batch_size={config.batch_size} must split into config.accum_steps={config.accum_steps} "
      f"microbatches that each divide over {jax.device_count()} devices."
    )
  return make_mesh(fsdp=config.mesh.fsdp)


def to_global(local_batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """Assembles each process's share of the batch into global arrays sharded along the batch axis."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


def prefetch_to_device(batches: Iterable[Any], place: Callable[[Any], Any], *, size: int = 2) -> Iterator[Any]:
  """Yields ``place(batch)`` for each batch, produced ``size`` ahead by a background thread.

  Reading the next batch from tf.data and copying it to the devices then overlap the running step instead of
  adding to it. One producer keeps the order; its errors are raised in the consumer.
  """
  buffer: queue.Queue = queue.Queue(maxsize=size)
  done = object()
  stop = threading.Event()

  def produce():
    try:
      for batch in batches:
        if stop.is_set():
          return
        buffer.put(place(batch))
      buffer.put(done)
    except BaseException as e:  # noqa: BLE001 - handed to the consumer, which re-raises it.
      buffer.put(e)

  threading.Thread(target=produce, daemon=True, name="prefetch_to_device").start()
  try:
    while (item := buffer.get()) is not done:
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()
    while not buffer.empty():  # Unblocks a producer waiting on a full buffer, so that it sees `stop`.
      buffer.get_nowait()


class Jit:
  """Steps compiled with ``jax.jit`` over a (data, fsdp) mesh; arrays are global."""

  def __init__(self, mesh: Mesh, abstract_state: Any):
    self.mesh = mesh
    self.state_sharding = state_sharding(mesh, abstract_state)
    self.batch = batch_sharding(mesh)
    self.replicated = replicated(mesh)

  def init(self, init_fn: Callable, rng: jax.Array) -> Any:
    """The initial state in the checkpoint (jit) layout; ``from_checkpoint`` makes it this strategy's."""
    return jax.jit(init_fn, out_shardings=self.state_sharding)(rng)

  def train_step(self, step_fn: Callable) -> Callable:
    return jax.jit(
      step_fn,
      in_shardings=(self.state_sharding, self.batch, self.replicated),
      out_shardings=(self.state_sharding, self.replicated),
      donate_argnums=0,
    )

  def eval_step(self, step_fn: Callable) -> Callable:
    return jax.jit(step_fn, in_shardings=(self.state_sharding, self.batch), out_shardings=self.replicated)

  # Copies of the compiled program that run per step: the one global program under jit (its cost is the job's).
  programs = 1

  def place_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    return to_global(local_batch, self.batch)

  def abstract_batch(self, local_shapes: dict[str, tuple[tuple[int, ...], Any]]) -> dict[str, jax.ShapeDtypeStruct]:
    """What `place_batch` makes of host batches of these (shape, dtype)s, without data: for lowering a step."""
    return {
      k: jax.ShapeDtypeStruct((shape[0] * jax.process_count(), *shape[1:]), dtype, sharding=self.batch)
      for k, (shape, dtype) in local_shapes.items()
    }

  def restore_target(self, abstract_state: Any) -> Any:
    return jax.tree.map(
      lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), abstract_state, self.state_sharding
    )

  def to_checkpoint(self, state: Any) -> Any:
    return state

  def from_checkpoint(self, state: Any) -> Any:
    return state

  def host_metrics(self, metrics: Any) -> Any:
    return jax.device_get(metrics)


class Pmap(Jit):
  """Steps compiled with ``jax.pmap`` over the local devices; the state is replicated, one copy per device."""

  def __init__(self, mesh: Mesh, abstract_state: Any):
    super().__init__(mesh, abstract_state)
    if mesh.shape[FSDP_AXIS] != 1:
      raise ConfigError("config.parallelism='pmap' keeps full replicas: use config.mesh.fsdp=1, or 'jit' for fsdp.")
    self.local_devices = jax.local_devices()
    self.local_mesh = Mesh(np.asarray(self.local_devices), (PMAP_AXIS,))
    self.programs = jax.device_count()  # One per device, each lowered for its own share of the batch.

  def train_step(self, step_fn: Callable) -> Callable:
    return jax.pmap(step_fn, axis_name=PMAP_AXIS, in_axes=(0, 0, None), donate_argnums=0)

  def eval_step(self, step_fn: Callable) -> Callable:
    return jax.pmap(step_fn, axis_name=PMAP_AXIS)

  def abstract_batch(self, local_shapes: dict[str, tuple[tuple[int, ...], Any]]) -> dict[str, jax.ShapeDtypeStruct]:
    n, sharding = len(self.local_devices), NamedSharding(self.local_mesh, P(PMAP_AXIS))
    return {
      k: jax.ShapeDtypeStruct((n, shape[0] // n, *shape[1:]), dtype, sharding=sharding)
      for k, (shape, dtype) in local_shapes.items()
    }

  def place_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    sharding = NamedSharding(self.local_mesh, P(PMAP_AXIS))
    n = len(self.local_devices)
    return jax.tree.map(lambda x: jax.device_put(x.reshape(n, -1, *x.shape[1:]), sharding), local_batch)

  def to_checkpoint(self, state: Any) -> Any:
    """One replica, as global arrays replicated over the mesh (the jit layout)."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self.replicated, _first_replica(x)), state)

  def from_checkpoint(self, state: Any) -> Any:
    return flax.jax_utils.replicate(
      jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), state), self.local_devices
    )

  def host_metrics(self, metrics: Any) -> Any:
    return jax.tree.map(_first_replica, metrics)


def _first_replica(x: jax.Array) -> np.ndarray:
  """The copy held by the first local device of a pmap-replicated array."""
  return np.asarray(x.addressable_shards[0].data)[0]


PARALLELISM = {"jit": Jit, "pmap": Pmap}


def create(parallelism: str, mesh: Mesh, abstract_state: Any) -> Jit:
  if parallelism not in PARALLELISM:
    raise ConfigError(f"Unknown parallelism {parallelism!r}; choose one of: {', '.join(PARALLELISM)}.")
  return PARALLELISM[parallelism](mesh, abstract_state)
