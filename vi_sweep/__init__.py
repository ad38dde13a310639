"""vi_sweep: where does Monte-Carlo ELBO training break down?

Config -> trainer -> parquet -> analysis -> figures. Importing this package is cheap (no JAX);
the trainer lives in :mod:`vi_sweep.core.trainer`.
"""

__version__ = "0.1.0"
