"""Engine benchmark: ``python -m bench.engine [--patients N]``."""
