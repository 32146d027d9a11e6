"""Your own folder of images: defaults picked from the images found there.

``python -m vitjax.main --config=configs/folder.py:/data/my_images --workdir=/tmp/my_images``

Built by vitjax/configs/folder.py (its docstring says which model, preprocessing and recipe it picks and when),
inside the package so that ``python -m vitjax.workflow`` trains with it from any directory and after
``pip install``. Every choice can be overridden with ``--config.KEY=VALUE``.
"""

from vitjax.configs.folder import get_config

__all__ = ["get_config"]
