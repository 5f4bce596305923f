"""NDIF's model actor on a machine without a GPU.

The stock actor (``ndif.services.ray.deployments.modeling.base.ModelActor``) is written for
GPUs: it sets the CUDA device, loads onto it, synchronises CUDA after loading and after every
request, and checks that every weight sits on a CUDA device. :class:`CpuModelActor` is the
same :class:`BaseModelDeployment` with those steps done for the CPU; everything else (the
request's deserialisation and execution, statuses, the result's path back) is NDIF's own.
The controller is pointed at it through its own setting ``NDIF_MODEL_IMPORT_PATH``.

It loads the model through :func:`reprlab.ndif_local.core.load_server_model`, which passes the
tokenizer explicitly: with transformers 5.x nnsight cannot otherwise build a ``LanguageModel``
from a local folder ("Impossible to guess which tokenizer to use").

``num_cpus=0``: the controller holds one CPU, and a two-core machine must still place the
model.
"""

from __future__ import annotations

import gc
import logging

import ray
from ndif.services.ray.deployments.modeling.base import BaseModelDeployment

from reprlab.ndif_local.core import load_server_model

logger = logging.getLogger(__name__)


class _CpuDeployment(BaseModelDeployment):
    def load_from_disk(self):
        model = load_server_model(self.model_key, self.dtype_name)
        logger.info("loaded %s on the CPU", self.model_key)
        return model

    def cleanup(self) -> None:
        self.kill_switch.clear()
        self.kill_reason = None
        self.execution_ident = None
        self.model.interleaver.cancel()
        gc.collect()


CpuModelActor = ray.remote(num_cpus=0, max_restarts=0)(_CpuDeployment)
