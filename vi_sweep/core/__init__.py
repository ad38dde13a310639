"""The science: targets, objectives, optimizers and the trainer. JAX and optax only.

``config -> trainer -> parquet -> analysis -> figures``: this package is the trainer. It never
imports Hydra, pandas or the rest of vi_sweep, so it can be used, tested and read on its own::

    from vi_sweep.core.trainer import split_fields, train_one
    spec, traced = split_fields(fields)           # static TrainSpec + traced values
    state, rows = train_one(spec, traced)         # one jitted lax.scan
"""
