"""Device mesh, shardings, and host-local <-> global arrays for data-parallel training."""

import collections
from typing import Any, Iterable, Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
  """A one-axis data-parallel mesh over all (global) devices, with ``Auto`` axis types."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Shards the leading (batch) axis over the data axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(batch_size: int, *, name: str = "batch_size") -> None:
  """Fails early, naming the fix, when a global batch cannot be split evenly over devices and processes."""
  devices, processes = jax.device_count(), jax.process_count()
  if batch_size <= 0 or batch_size % devices:
    raise ValueError(f"config.{name}={batch_size} must be a positive multiple of the device count {devices}; "
                     f"use e.g. {max(1, round(batch_size / devices)) * devices}.")
  if batch_size % processes:
    raise ValueError(f"config.{name}={batch_size} must divide by the process count {processes}.")


def to_global(local_batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """Assembles each process's share of the batch into global arrays sharded along the batch axis."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


def prefetch_to_device(batches: Iterable[Any], sharding: NamedSharding, *, size: int = 2) -> Iterator[Any]:
  """Keeps ``size`` batches in flight on the devices so the host copy overlaps the step."""
  queue = collections.deque()
  iterator = iter(batches)

  def enqueue(n: int) -> None:
    for batch in iterator:
      queue.append(to_global(batch, sharding))
      if len(queue) >= n:
        return

  enqueue(size)
  while queue:
    yield queue.popleft()
    enqueue(size)
