"""muxserve: serve many LLMs on shared devices with MuxServe's spatial-temporal multiplexing."""

__version__ = "0.1.0"

# Before anything loads torch: the engine's OpenMP spin default (services/worker/engine/openmp.py).
from services.worker.engine.openmp import set_spincount as _set_spincount  # noqa: E402

_set_spincount()
