"""Rematerialisation of a Flax block by name: what the backward pass recomputes instead of storing.

"none" stores every activation, "full" recomputes the whole block (`jax.checkpoint` saving nothing but its inputs),
and any argument-free `jax.checkpoint_policies` name (e.g. "dots_saveable": keep matmul outputs, recompute the rest)
picks that policy.
"""

import inspect

import flax.linen as nn
import jax

from vitjax.errors import ConfigError


def remat_policies() -> list[str]:
  """Names `remat` takes: "none", "full" (recompute everything), and the argument-free `jax.checkpoint_policies`."""
  policies = jax.checkpoint_policies
  named = [
    n for n in dir(policies) if not n.startswith("_") and "prim" in inspect.signature(getattr(policies, n)).parameters
  ]
  return ["none", "full", *sorted(named)]


def remat_block(block: type[nn.Module], remat: str, *, scan: bool) -> type[nn.Module]:
  """`block` rematerialised in the backward pass as `remat` says (`nn.remat` with that policy), or as is."""
  if remat not in remat_policies():
    raise ConfigError(f"Unknown remat {remat!r}; choose one of: {', '.join(remat_policies())}")
  if remat == "none":
    return block
  policy = None if remat == "full" else getattr(jax.checkpoint_policies, remat)
  # Under scan the loop already keeps XLA from merging the recomputation into the forward pass.
  return nn.remat(block, policy=policy, prevent_cse=not scan, static_argnums=(2,))
