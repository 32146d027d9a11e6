"""PyTorch state-dict layout <-> Flax: the kernel transposes and normalisation renames every family's mapping uses.

A converter returns flat variables keyed `params/<flax path>` or `batch_stats/<flax path>`; these helpers produce
such entries from the torch names under a prefix, so a family's mapping reads as a list of module pairs.
`to_torch` runs the same renames backwards for publishing, module by module.
"""

from collections.abc import Callable, Iterator, Mapping

import numpy as np

State = Mapping[str, np.ndarray]
Flat = dict[str, np.ndarray]


def conv_kernel(weight: np.ndarray) -> np.ndarray:
  """A torch convolution weight (out, in / groups, kh, kw) as a Flax kernel (kh, kw, in / groups, out).

  Depthwise weights (C, 1, kh, kw) become (kh, kw, 1, C), the kernel of `feature_group_count=C`.
  """
  return np.transpose(weight, (2, 3, 1, 0))


def dense_kernel(weight: np.ndarray) -> np.ndarray:
  """A torch Linear weight (out, in) as a Flax Dense kernel (in, out)."""
  return np.transpose(weight)


def conv(state: State, source: str, target: str, *, bias: bool | None = None) -> Flat:
  """`source.weight` (and `source.bias` when present, or when `bias` is True) as the conv at `target`."""
  out = {f"params/{target}/kernel": conv_kernel(state[f"{source}.weight"])}
  if bias or (bias is None and f"{source}.bias" in state):
    out[f"params/{target}/bias"] = state[f"{source}.bias"]
  return out


def dense(state: State, source: str, target: str) -> Flat:
  """A torch Linear at `source` as the Dense at `target` (bias when the checkpoint has one)."""
  out = {f"params/{target}/kernel": dense_kernel(state[f"{source}.weight"])}
  if f"{source}.bias" in state:
    out[f"params/{target}/bias"] = state[f"{source}.bias"]
  return out


def batch_norm(state: State, source: str, target: str) -> Flat:
  """A torch BatchNorm: affine weight and bias as `scale`/`bias`, running statistics as `batch_stats` mean/var."""
  return {
    f"params/{target}/scale": state[f"{source}.weight"],
    f"params/{target}/bias": state[f"{source}.bias"],
    f"batch_stats/{target}/mean": state[f"{source}.running_mean"],
    f"batch_stats/{target}/var": state[f"{source}.running_var"],
  }


def norm(state: State, source: str, target: str) -> Flat:
  """A torch LayerNorm or GroupNorm: weight and bias as Flax's `scale` and `bias`."""
  return {f"params/{target}/scale": state[f"{source}.weight"], f"params/{target}/bias": state[f"{source}.bias"]}


def torch_conv(kernel: np.ndarray) -> np.ndarray:
  """A Flax conv kernel (kh, kw, in / groups, out) as a torch weight (out, in / groups, kh, kw): `conv_kernel`'s
  inverse."""
  return np.ascontiguousarray(np.transpose(kernel, (3, 2, 0, 1)))


def to_torch(flat: Flat, module: Callable[[str], str | None]) -> Flat:
  """Flat Flax variables (`params/...`, `batch_stats/...`) as a torch state dict, `module(flax module path)` giving
  each torch module name (None: left for the caller). Kernels are transposed by rank (4: conv, 2: Linear),
  `scale` is `weight`, BatchNorm statistics are `running_mean`/`running_var` with a `num_batches_tracked`."""
  leaves = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
  out = {}
  for key, value in flat.items():
    collection, _, rest = key.partition("/")
    path, _, leaf = rest.rpartition("/")
    name = module(path)
    if name is None or collection not in ("params", "batch_stats"):
      continue
    value = np.asarray(value, np.float32)
    if leaf == "kernel":
      out[f"{name}.weight"] = torch_conv(value) if value.ndim == 4 else np.ascontiguousarray(value.T)
    elif leaf in leaves:
      out[f"{name}.{leaves[leaf]}"] = value
      if leaf == "mean":
        out[f"{name}.num_batches_tracked"] = np.zeros((), np.int64)
    else:
      out[f"{name}.{leaf}"] = value
  return out


class RecordingState(Mapping):
  """A state dict that remembers which keys were read, so that what no mapping used can be reported."""

  def __init__(self, state: State):
    self._state, self.read = state, set()

  def __getitem__(self, key: str) -> np.ndarray:
    value = self._state[key]
    self.read.add(key)
    return value

  def __contains__(self, key: object) -> bool:
    return key in self._state  # A membership test is not a use.

  def __iter__(self) -> Iterator[str]:
    return iter(self._state)

  def __len__(self) -> int:
    return len(self._state)

  def unread(self) -> list[str]:
    """Keys never read, besides BatchNorm's `num_batches_tracked` counters (not variables here)."""
    return sorted(k for k in self._state if k not in self.read and not k.endswith("num_batches_tracked"))
