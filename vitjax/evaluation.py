"""Evaluation of a trained checkpoint: ``--mode=eval`` writes ``workdir/eval_<split>.json``."""

import functools
import json
import os
from typing import Any

import jax
import ml_collections

from vitjax import checkpoints, data, models, optim, sharding, steps, train


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Evaluates the newest readable checkpoint in ``workdir`` on ``config.data.eval_split``."""
  train.validate(config)
  builder = train.prepare_dataset(config)
  num_classes = data.num_classes(builder)
  mesh = sharding.make_mesh()
  batch_sharding, replicated = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  model = models.build(config.model.name, num_classes=num_classes, **train.model_overrides(config))
  num_steps = train.total_steps(config, data.num_examples(builder, config.data.train_split))
  tx, _ = optim.create_optimizer(config, total_steps=num_steps)
  eval_ds = data.eval_dataset(builder, config.data, batch_size=config.eval_batch_size // jax.process_count(),
                              process_index=jax.process_index(), process_count=jax.process_count())
  image_shape = tuple(eval_ds.element_spec["image"].shape[1:])
  abstract_state = jax.eval_shape(functools.partial(train.create_train_state, model, tx, image_shape=image_shape),
                                  jax.random.key(0))
  target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), abstract_state)
  restored = checkpoints.restore_latest(checkpoints.create_manager(workdir, max_to_keep=config.keep_checkpoints),
                                        target)
  if restored is None:
    raise ValueError(f"No checkpoint in {os.path.join(workdir, 'checkpoints')!r}; train first with --mode=train.")
  state, meta = restored
  eval_step = jax.jit(steps.make_eval_step(loss_fn=train.loss_function(config)),
                      in_shardings=(jax.tree.map(lambda _: replicated, state), batch_sharding),
                      out_shardings=replicated)
  results = {"config": config.get("name"), "model": config.model.name, "dataset": config.data.dataset,
             "split": config.data.eval_split, "step": int(state.step), "train_seconds": meta["train_seconds"],
             **train.evaluate(eval_step, state, eval_ds, batch_sharding)}
  if jax.process_index() == 0:
    path = os.path.join(workdir, f"eval_{config.data.eval_split.replace('/', '_')}.json")
    with open(path, "w") as f:
      json.dump(results, f, indent=2)
  return results
