"""The parquet contract between the launcher and the analysis: what a run's file holds, how it is
written (atomically) and read back, and where exact baselines are kept. pyarrow only: no Hydra,
no pandas, no JAX at import.
"""
