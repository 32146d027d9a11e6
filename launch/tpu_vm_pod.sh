#!/usr/bin/env bash
# Runs a config on every worker of a Cloud TPU VM pod slice. JAX finds its peers from the TPU metadata, so every
# worker runs the same command; vitjax calls jax.distributed.initialize() when TPU_WORKER_HOSTNAMES lists several.
#
#   launch/tpu_vm_pod.sh TPU_NAME ZONE gs://bucket/workdir configs/vit_b16.py:imagenet2012 [--config.x=y ...]
#
# The workdir must be on storage all workers share (a GCS bucket); checkpoints are written cooperatively.
set -euo pipefail
tpu=${1:?TPU name}; zone=${2:?zone}; workdir=${3:?workdir}; config=${4:?config}
shift 4
overrides=$(printf ' %q' "$@")
here=$(cd "$(dirname "$0")/.." && pwd)

# Ship this checkout to every worker, so the pod runs exactly the code you have here.
tar -C "${here}" --exclude=.git -czf /tmp/vitjax-src.tgz .
gcloud compute tpus tpu-vm scp /tmp/vitjax-src.tgz "${tpu}":vitjax-src.tgz --zone="${zone}" --worker=all
gcloud compute tpus tpu-vm ssh "${tpu}" --zone="${zone}" --worker=all --command="
  set -e
  mkdir -p vitjax && tar -C vitjax -xzf vitjax-src.tgz
  cd vitjax
  python3 -m pip install -q -r requirements.txt 'jax[tpu]==0.10.2'
  python3 -m vitjax.main --config=${config} --workdir=${workdir}${overrides}
"
