"""The in-process engine (usable without gRPC). Importing it sets the OpenMP spin default (openmp.py)."""

from services.worker.engine.openmp import set_spincount

set_spincount()
