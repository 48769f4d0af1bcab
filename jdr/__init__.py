"""jdr: dense text retrievers in JAX/Flax."""

__version__ = "0.1.0"
