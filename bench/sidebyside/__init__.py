"""Helpers of bench/cpu_engines.py: per-engine virtualenvs, GGUF writing and one worker script per engine.

The worker scripts (run_*.py) run as separate processes, each under the Python of its own engine's
virtualenv, so they import nothing from this project but protocol.py (stdlib only)."""
