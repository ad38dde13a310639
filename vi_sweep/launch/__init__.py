"""Hydra's side: config schemas and validation, the task, callbacks, and the batched launcher.

``config -> trainer -> parquet``: this package turns composed configs into runs of
:mod:`vi_sweep.core` and writes them through :mod:`vi_sweep.store`. Rooms:

- ``config`` (schemas from the core's builder signatures, rules, validation of a composed
  config), ``errors`` (Hydra's and OmegaConf's errors as one line), ``entry`` (starting Hydra for
  ``run``/``multirun``, ``--help``), ``sweep_checks`` (a multirun's checks before it writes),
  ``task`` (one run: the Hydra task function), ``callbacks``, ``job_values`` (the float each job
  returns to the sweeper), ``tracking`` (the MLflow callback);
- the batched launcher: ``options`` (its one options dataclass, registered by
  ``hydra_plugins/vi_sweep_launcher``), ``batched`` (one sweep as one program per shape),
  ``compose`` (fast composition), ``resume``, ``sweep_plan``, ``interrupts`` (Ctrl-C noted, and held
  while a run file lands and is counted), ``devices`` (JAX devices, start and
  collect a batch, compile counts), ``job_dirs`` (Hydra's job directories), ``cluster``
  (the submitit engine).
"""
