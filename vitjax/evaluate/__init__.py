"""Evaluation: metrics (jitted clu collections and host-side numpy), the `--mode=eval` report, few-shot and k-NN
evaluators on features, and every plot."""
