"""The CLI reproduces the seed notebook's printed tables (../shared/seed/notebook.txt).

Tolerance: relative 1e-4, absolute 1e-5 near zero (the notebook printed 6 decimals and its
exact-mode KL suffered float32 cancellation, e.g. -0.000003, which vi_sweep's stable KL fixes).
Where the printout was cut off, the full table comes from the notebook's own code
(tests/seed_notebook.py) run side by side.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.seed_notebook import reference_rows

COLUMNS = ("step", "loss", "kl", "mu_norm", "sigma_mean", "sigma_std", "sigma_min")

# Rows exactly as printed in the notebook (t, loss, KL, |mu|, mean, std, min(sigma)).
EXACT_SANITY = [  # run(mode="exact", seed=0, d=100, steps=2000, lr=5e-2, init_log_sigma=-3.0, log_every=200)
    (1, 250.123932, 245.136993, 0.0000, 0.0523, 0.0000, 5.2340e-02),
    (200, 0.000006, 0.000006, 0.0000, 0.9998, 0.0000, 9.9983e-01),
    (400, 0.000000, 0.000000, 0.0000, 1.0000, 0.0000, 1.0000e00),
    (600, -0.000003, -0.000003, 0.0000, 1.0000, 0.0000, 1.0000e00),
    (800, -0.000003, -0.000003, 0.0000, 1.0000, 0.0000, 1.0000e00),
    (1000, -0.000003, -0.000003, 0.0000, 1.0000, 0.0000, 1.0000e00),
    (1200, -0.000003, -0.000003, 0.0000, 1.0000, 0.0000, 1.0000e00),
    (1400, -0.000003, -0.000003, 0.0000, 1.0000, 0.0000, 1.0000e00),
]
MC_GOOD = [  # run(mode="mc", seed=0, d=100, steps=10000, lr=5e-2, num_mc=32, init_log_sigma=-3.0, log_every=1000)
    (1, 247.486664, 245.261993, 0.5000, 0.0523, 0.0000, 5.2340e-02),
    (1000, 0.192264, 0.468204, 0.5972, 0.9942, 0.0534, 8.6873e-01),
    (2000, 0.876277, 0.541946, 0.7078, 1.0031, 0.0542, 8.9238e-01),
    (3000, 0.530626, 0.421085, 0.5891, 0.9875, 0.0478, 8.7415e-01),
    (4000, 0.397608, 0.446191, 0.6177, 1.0044, 0.0503, 8.5669e-01),
    (5000, 0.617996, 0.552384, 0.6356, 1.0020, 0.0593, 8.6286e-01),
    (6000, 0.483220, 0.488588, 0.6183, 0.9901, 0.0534, 8.5783e-01),
    (7000, 0.482189, 0.475805, 0.6490, 0.9951, 0.0512, 8.8723e-01),
]
MC_STRESS = [  # run(mode="mc", seed=0, d=100, steps=4000, lr=2e-1, num_mc=1, init_log_sigma=-3.0, log_every=200)
    (1, 246.082306, 232.184998, 2.0000, 0.0608, 0.0000, 6.0810e-02),
    (200, 8.199280, 11.450817, 3.0370, 0.9815, 0.2500, 3.7768e-01),
    (400, 8.570023, 12.263913, 3.1032, 0.9925, 0.2690, 3.8712e-01),
    (600, 4.533768, 11.666977, 3.2454, 0.9606, 0.2394, 3.3763e-01),
    (800, 8.456177, 12.849049, 3.1989, 1.0054, 0.2809, 5.6365e-01),
    (1000, 18.115662, 16.669365, 3.3841, 1.0090, 0.3383, 3.6990e-01),
    (1200, 24.594284, 15.183155, 2.8522, 0.9744, 0.3180, 2.1452e-01),
    (1400, 14.525162, 12.611357, 2.9606, 0.9385, 0.2665, 2.1321e-01),
]

CASES = {
    "exact_sanity": (
        ["objective=exact", "lr=5e-2", "init_log_sigma=-3.0", "steps=2000", "log_every=200"],
        dict(mode="exact", lr=5e-2, init_log_sigma=-3.0, steps=2000, log_every=200),
        EXACT_SANITY,
    ),
    "mc_good": (
        ["lr=5e-2", "num_mc=32", "init_log_sigma=-3.0", "steps=10000", "log_every=1000"],
        dict(mode="mc", lr=5e-2, num_mc=32, init_log_sigma=-3.0, steps=10000, log_every=1000),
        MC_GOOD,
    ),
    "mc_stress": (["scenario=seed_stress"], dict(mode="mc", lr=2e-1, num_mc=1, init_log_sigma=-3.0, steps=4000, log_every=200), MC_STRESS),
}

# The printed values have 4-6 significant decimals; the absolute slack covers that rounding.
PRINT_ATOL = {"loss": 1e-5, "kl": 1e-5, "mu_norm": 5e-5, "sigma_mean": 5e-5, "sigma_std": 5e-5, "sigma_min": 5e-5}


@pytest.fixture(scope="module", params=sorted(CASES))
def cli_case(request, tmp_path_factory):
    from tests.conftest import run_cli

    overrides, reference_kwargs, printed = CASES[request.param]
    out = tmp_path_factory.mktemp(request.param)
    result = run_cli("run", *overrides, f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr
    return result, pd.read_parquet(out / "metrics.parquet"), reference_kwargs, printed


def test_cli_matches_the_notebooks_printed_table(cli_case):
    _, frame, _, printed = cli_case
    by_step = frame.set_index("step")
    for row in printed:
        step, values = row[0], dict(zip(COLUMNS[1:], row[1:]))
        for column, expected in values.items():
            actual = by_step.loc[step, column]
            assert actual == pytest.approx(expected, rel=1e-4, abs=PRINT_ATOL[column]), (step, column)


def test_cli_matches_the_notebooks_full_loop(cli_case):
    """All rows, including those cut from the printout and the tail probes, against the notebook's own code."""
    _, frame, reference_kwargs, _ = cli_case
    probes = set(frame.loc[frame["probe"], "step"].tolist())
    reference = reference_rows(seed=0, d=100, also=probes, **reference_kwargs)
    np.testing.assert_array_equal(frame["step"].to_numpy(), reference["step"])
    logged = frame[~frame["probe"]]["step"].to_numpy()
    assert logged[0] == 1 and (logged[1:] % reference_kwargs["log_every"] == 0).all()  # the notebook's rows, and they only
    for column in COLUMNS[1:]:
        np.testing.assert_allclose(frame[column].to_numpy(), reference[column], rtol=1e-4, atol=1e-5, err_msg=column)


def test_cli_prints_the_notebooks_rows(cli_case):
    result, frame, _, printed = cli_case
    lines = [line for line in result.stdout.splitlines() if line.startswith("t=")]
    assert len(lines) == int((~frame["probe"]).sum())  # the logged rows: tail probes are in the file only
    assert lines[0].startswith("t=    1  loss=")
    assert "KL=" in lines[0] and "|mu|=" in lines[0] and "min(sigma)=" in lines[0]


def test_kl_column_is_never_negative(cli_case):
    _, frame, _, _ = cli_case
    assert (frame["kl"] >= 0).all()
