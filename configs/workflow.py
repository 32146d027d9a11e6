"""The workflow's stages and their settings: the default config of ``python -m vitjax.workflow``.

``python -m vitjax.workflow --images=/tmp/digits --workdir=/tmp/wf --config=configs/workflow.py:runlocal``

Built by vitjax/configs/workflow.py (its docstring says what each stage does), inside the package so that the
command's default works from any directory and after ``pip install``. Every field can be overridden
(``--config.tune.trials=20``).
"""

from vitjax.configs.workflow import get_config

__all__ = ["get_config"]
