"""analysis/: reading sweeps, exact baselines, outcome classification, phase table.

Outcomes are checked on synthetic trajectories with known answers (no JAX involved); baselines
against the notebook's own exact loop; statistics against scipy/numpy references.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from vi_sweep.analysis import references as baseline_module
from vi_sweep.analysis.references import References, closed_form_constants, exact_baselines, target_constants, target_structure
from vi_sweep.analysis.load import load_sweep, load_trajectories
from vi_sweep.analysis.read import SkippedFileWarning, Sweep, SweepError, read_sweep
from vi_sweep.analysis.outcomes import OUTCOMES, Thresholds, classify, falling_critical_t, noise_floor_spread, tail_trend
from vi_sweep.analysis.phase import bootstrap_median_interval, cell_keys, example_cells, phase_table
from tests.seed_notebook import reference_rows
from tests.sweeps import composed_fields, grid, write_sweep
from vi_sweep.core.schedule import row_steps
from vi_sweep.store.metrics import METRIC_COLUMNS

STEPS, PROBES = row_steps(2000, 200)  # the default grid's rows: 11 logged, and the tail probes
TAIL = STEPS > 1600
D = 100  # tolerance = 0.01 * 100 = 1 nat
INIT_KL = 150.9
RNG = np.random.default_rng(0)


# ---------------------------------------------------------------------------------------------
# Synthetic sweeps: hand-made trajectories, hand-made references
# ---------------------------------------------------------------------------------------------


def decay(start: float, end: float, rate: float = 0.02) -> np.ndarray:
    """KL falling from ``start`` to ``end`` geometrically, reaching ``end`` long before the tail."""
    return end + (start - end) * np.exp(-rate * STEPS)


def noisy(level: float, scale: float, seed: int = 0) -> np.ndarray:
    """A noise floor: ``level`` with independent multiplicative noise after the first rows."""
    values = decay(INIT_KL, level)
    values[2:] = level * np.exp(scale * np.random.default_rng(seed).standard_normal(len(values) - 2))
    return values


def wandering_floor(level: float) -> np.ndarray:
    """A noise floor that wanders slowly: one slow swing over the tail, no net trend. Its rows are
    strongly correlated: a 400-step tail holds too few independent samples to call it flat."""
    values = level * np.exp(0.3 * np.cos(2 * np.pi * (STEPS - 1600) / 400) + 0.01 * RNG.standard_normal(len(STEPS)))
    values[0] = INIT_KL
    return values


def synthetic_sweep(cases: list[dict]) -> tuple[Sweep, References]:
    """One run per case, each with its own baseline. Case keys: kl, baseline_kl, sigma_min,
    baseline_sigma_min, diverged, init (the excess before the first step)."""
    runs, rows, base_rows, per_run, bases, fields = [], [], [], [], [], []
    n = len(STEPS)
    for i, case in enumerate(cases):
        kl = np.asarray(case["kl"], float)
        sigma_min = np.broadcast_to(np.asarray(case.get("sigma_min", 0.9), float), (n,))
        base_sigma_min = np.broadcast_to(np.asarray(case.get("baseline_sigma_min", 1.0), float), (n,))
        flagged = np.broadcast_to(np.asarray(case.get("diverged", False)), (n,))
        config = dict(objective="mc", estimator="reparam", optimizer="adam", target="standard_normal", lr=float(i + 1))
        config.update(num_mc=1, seed=0, d=D, steps=2000, init_log_sigma=-2.0, log_every=200)
        fields.append(config)
        runs.append(dict(run=i, job=str(i), **config, scenario="none", status="ok", diverged_at=0, n_logged=n))
        rows.append(_rows(i, kl, sigma_min, flagged))
        base_rows.append(_rows(i, np.asarray(case["baseline_kl"], float), base_sigma_min, np.zeros(n, bool)))
        per_run.append(dict(run=i, baseline=i, init_kl_excess=case.get("init", INIT_KL), kl_floor=0.0, sigma_star_min=1.0))
        bases.append(dict(baseline=i, source="computed", status="ok", diverged_at=0, n_logged=n, key=str(i)))
    sweep = Sweep(None, pd.DataFrame(runs), pd.concat(rows, ignore_index=True), tuple(fields), (), ())
    references = References(pd.DataFrame(per_run).set_index("run"), pd.DataFrame(bases), pd.concat(base_rows, ignore_index=True))
    return sweep, references


def _rows(run: int, kl: np.ndarray, sigma_min: np.ndarray, flagged: np.ndarray) -> pd.DataFrame:
    frame = pd.DataFrame({"run": run, "step": STEPS, "probe": PROBES})
    for column in METRIC_COLUMNS[2:]:
        frame[column] = 1.0
    frame["kl"], frame["sigma_min"], frame["diverged"] = kl, sigma_min, flagged
    frame["kl_excess"] = kl  # a diagonal target: the floor is 0
    frame["sigma_mean"] = np.maximum(sigma_min, 1.0)
    return frame


CONVERGED_BASELINE = decay(INIT_KL, 0.0, rate=0.05)
CYCLE = np.where(np.arange(len(STEPS)) % 2 == 0, 4.776, 9.805)  # plain SGD at lr = 1.1: two KLs, forever
RISING = np.where(TAIL, 2.0 + 0.02 * (STEPS - 1600), 2.0) * np.exp(0.05 * RNG.standard_normal(len(STEPS)))
BURSTS = np.where(TAIL & (RNG.random(len(STEPS)) < 0.3), 20.0, 0.3) * np.exp(0.05 * RNG.standard_normal(len(STEPS)))
KNOWN_OUTCOMES = [
    # (name, case, expected outcome)
    ("reaches the exact optimum within 1 nat", dict(kl=noisy(0.5, 0.1), baseline_kl=CONVERGED_BASELINE), "converged"),
    ("noise floor above the tolerance", dict(kl=noisy(12.0, 0.1), baseline_kl=CONVERGED_BASELINE), "stalled"),
    ("still falling geometrically at the end", dict(kl=decay(INIT_KL, 0.0, rate=0.002), baseline_kl=CONVERGED_BASELINE), "slow"),
    ("exact run has not converged either", dict(kl=decay(INIT_KL, 0.0, rate=1e-4) + 0.5, baseline_kl=decay(INIT_KL, 0.0, rate=1e-4)), "slow"),
    ("variance collapse", dict(kl=noisy(80.0, 0.1), sigma_min=np.where(STEPS > 400, 1e-5, 0.1), baseline_kl=CONVERGED_BASELINE), "collapsed"),
    ("a collapse its exact twin shares is not the estimator's", dict(kl=noisy(0.5, 0.1), sigma_min=1e-5, baseline_sigma_min=1e-5, baseline_kl=CONVERGED_BASELINE), "converged"),
    ("non-finite value at one step", dict(kl=np.r_[noisy(0.5, 0.1)[:5], np.nan, noisy(0.5, 0.1)[6:]], baseline_kl=CONVERGED_BASELINE), "diverged"),
    ("trainer's diverged flag", dict(kl=noisy(0.5, 0.1), diverged=STEPS > 1000, baseline_kl=CONVERGED_BASELINE), "diverged"),
    ("far from the optimum after moving away from its start", dict(kl=np.r_[1.1e6, noisy(4700.0, 0.01)[1:]], sigma_min=1e-21, baseline_kl=CONVERGED_BASELINE), "diverged"),
    ("started far and still falling: slow, not diverged", dict(kl=decay(5000.0, 0.0, rate=0.0005), init=5000.0, baseline_kl=CONVERGED_BASELINE), "slow"),
    ("a noise floor that wanders slower than the tail is long", dict(kl=wandering_floor(12.0), baseline_kl=CONVERGED_BASELINE), "undetermined"),
    ("a tail that rises", dict(kl=RISING, baseline_kl=CONVERGED_BASELINE), "unstable"),
    ("a tail that bursts", dict(kl=BURSTS, baseline_kl=CONVERGED_BASELINE), "unstable"),
    ("the exact twin cycles", dict(kl=noisy(17.0, 0.1), baseline_kl=CYCLE), "unstable"),
]


@pytest.mark.parametrize("name,case,expected", KNOWN_OUTCOMES, ids=[c[0] for c in KNOWN_OUTCOMES])
def test_outcome_of_a_synthetic_trajectory(name, case, expected):
    sweep, references = synthetic_sweep([case])
    runs = classify(sweep, references)
    assert runs["outcome"].iloc[0] == expected, runs["reason"].iloc[0]
    assert runs["reason"].iloc[0]  # every outcome says why


def test_outcomes_are_classified_together_and_in_run_order():
    cases = [case for _, case, _ in KNOWN_OUTCOMES]
    runs = classify(*synthetic_sweep(cases))
    assert runs["outcome"].astype(str).tolist() == [expected for _, _, expected in KNOWN_OUTCOMES]
    assert list(runs["outcome"].cat.categories) == list(OUTCOMES)


def test_an_exact_twin_locked_in_a_cycle_is_unstable_not_slow():
    runs = classify(*synthetic_sweep([dict(kl=noisy(17.0, 0.1), baseline_kl=CYCLE)]))
    assert runs["baseline_outcome"].iloc[0] == "unstable"


def test_matching_an_unconverged_baseline_is_slow_not_converged():
    # Tail excess within tol of an exact run that is itself 130 nats from the optimum is "slow"
    # (budget too short), not "converged".
    baseline = decay(INIT_KL, 0.0, rate=1e-4)
    runs = classify(*synthetic_sweep([dict(kl=baseline + 0.01, baseline_kl=baseline)]))
    assert runs["excess_over_exact"].iloc[0] == pytest.approx(0.01, abs=1e-6)
    assert runs["baseline_outcome"].iloc[0] == "slow"
    assert runs["outcome"].iloc[0] == "slow"


def test_thresholds_are_keyword_arguments_that_change_the_answer():
    sweep, references = synthetic_sweep([dict(kl=noisy(3.0, 0.05), baseline_kl=CONVERGED_BASELINE)])
    assert classify(sweep, references)["outcome"].iloc[0] == "stalled"
    assert classify(sweep, references, Thresholds(tol_per_dim=0.05))["outcome"].iloc[0] == "converged"
    collapsed = synthetic_sweep([dict(kl=noisy(0.5, 0.1), sigma_min=5e-3, baseline_kl=CONVERGED_BASELINE)])
    assert classify(*collapsed)["outcome"].iloc[0] == "converged"
    assert classify(*collapsed, Thresholds(collapse_ratio=1e-2))["outcome"].iloc[0] == "collapsed"
    with pytest.raises(ValueError, match="tail_fraction"):
        Thresholds(tail_fraction=0)


def test_time_to_tolerance_is_when_the_run_stays_within_it():
    baseline = np.where(STEPS >= 200, 0.0, INIT_KL)  # within the 1-nat level from step 200 on
    late = np.where(STEPS >= 400, 0.5, INIT_KL)  # from step 400 on
    touches_then_leaves = np.where((STEPS >= 400) & (STEPS < 1000), 0.5, np.where(STEPS < 400, INIT_KL, 12.0))
    runs = classify(*synthetic_sweep([dict(kl=late, baseline_kl=baseline), dict(kl=touches_then_leaves, baseline_kl=baseline)]))
    assert runs["steps_to_tol"].iloc[0] == 400 and runs["baseline_steps_to_tol"].iloc[0] == 200
    assert runs["time_to_tol_ratio"].tolist()[0] == 2.0
    assert np.isinf(runs["time_to_tol_ratio"].iloc[1])  # it touched the tolerance at 400, then left it
    assert runs["excess_over_exact"].iloc[0] == pytest.approx(0.5)
    unreached = classify(*synthetic_sweep([dict(kl=late, baseline_kl=np.full(len(STEPS), 50.0))]))
    assert np.isnan(unreached["time_to_tol_ratio"].iloc[0])


def test_the_trend_is_scipys_slope_with_noise_from_a_quadratic_fit_and_the_autocorrelation_correction():
    steps = STEPS[TAIL].astype(float)
    values = np.exp(RNG.normal(size=(6, len(steps))) - 0.001 * steps)
    trend = tail_trend(steps, values, alpha=0.01)
    for i in range(len(values)):
        y = np.log(values[i])
        reference = stats.linregress(steps, y)
        residual = y - np.polyval(np.polyfit(steps, y, 2), steps)
        r = max(0.0, float(np.sum(residual[1:] * residual[:-1]) / np.sum(residual**2)))
        se = np.sqrt(np.sum(residual**2) / (len(y) - 3) / np.sum((steps - steps.mean()) ** 2)) * np.sqrt((1 + r) / (1 - r))
        assert trend.slope[i] == pytest.approx(reference.slope, rel=1e-9)
        assert trend.t[i] == pytest.approx(reference.slope / se, rel=1e-6)
        assert trend.n_eff[i] == pytest.approx(len(steps) * (1 - r) / (1 + r), rel=1e-6)


def test_a_smooth_bend_is_not_mistaken_for_correlated_noise():
    steps = STEPS[TAIL].astype(float)
    settling = 0.5 + 100.0 * np.exp(-((steps - 1000.0) / 700.0) ** 2)  # still falling, bending towards a floor
    noisy_settling = settling * np.exp(0.01 * np.random.default_rng(2).standard_normal((1, len(steps))))
    trend = tail_trend(steps, noisy_settling, alpha=0.01)
    assert trend.falling[0] and trend.n_eff[0] > 20


def test_the_trend_edge_cases():
    steps = np.array([1.0, 2.0, 3.0, 4.0])
    trend = tail_trend(steps, np.array([[8.0, 4.0, 2.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]), alpha=0.01)
    assert trend.t[0] < -1e6 and trend.t[1] == 0.0 and trend.t[2] == 0.0  # exact geometric decay (round-off residuals only); flat; all zero
    assert trend.falling.tolist() == [True, False, False] and not trend.rising.any()


def test_white_noise_is_called_a_trend_about_alpha_of_the_time():
    steps = STEPS[TAIL].astype(float)
    trend = tail_trend(steps, np.exp(np.random.default_rng(1).normal(size=(2000, len(steps)))), alpha=0.05)
    assert 0.02 < trend.falling.mean() < 0.08 and 0.02 < trend.rising.mean() < 0.08


def test_noise_floor_spread_is_the_chi_square_quantile_ratio():
    for d in (1, 2, 10, 100):
        exact = stats.chi2.ppf(0.9, 2 * d) / stats.chi2.ppf(0.1, 2 * d)
        assert noise_floor_spread(np.array([d]))[0] == pytest.approx(exact, rel=0.15)


@pytest.mark.parametrize("alpha", [1e-4, 0.01, 0.05, 0.3, 0.5, 0.9])
def test_falling_critical_t_is_scipy_stats_t_ppf(alpha):
    for dof in [*range(1, 41), 99, 100, 1000, 5000]:
        assert falling_critical_t(dof, alpha) == pytest.approx(stats.t.ppf(1.0 - alpha, dof), rel=1e-11, abs=1e-15)
    assert falling_critical_t(1, 0.05) == pytest.approx(1.0 / np.tan(np.pi * 0.05), rel=1e-14)  # Cauchy: cot(pi alpha)
    with pytest.raises(ValueError):
        falling_critical_t(0, alpha)


# ---------------------------------------------------------------------------------------------
# Reading sweep directories
# ---------------------------------------------------------------------------------------------

SMALL = dict(d=5, steps=40, log_every=10)


@pytest.fixture(scope="module")
def small_sweep(tmp_path_factory):
    """8 MC runs (lr x num_mc x seed) at d=5, 40 steps: written as a launcher would."""
    sweep_dir = tmp_path_factory.mktemp("small_sweep")
    base = dict(composed_fields(), **SMALL)
    write_sweep(sweep_dir, grid(base, {"lr": (0.05, 0.2), "num_mc": (1, 4), "seed": (0, 1)}))
    return sweep_dir


def test_read_sweep_matches_pandas_reading_each_file(small_sweep):
    sweep = read_sweep(small_sweep)
    files = sorted(small_sweep.glob("*/metrics.parquet"), key=lambda p: int(p.parent.name))
    assert sweep.runs["job"].tolist() == [p.parent.name for p in files]
    for run, path in enumerate(files):
        direct = pd.read_parquet(path)
        mine = sweep.trajectories[sweep.trajectories["run"] == run]
        np.testing.assert_array_equal(mine["kl"].to_numpy(), direct["kl"].to_numpy())
        np.testing.assert_array_equal(mine["step"].to_numpy(), direct["step"].to_numpy())
        row = sweep.runs.iloc[run]
        for key in ("lr", "num_mc", "seed", "d", "optimizer", "objective", "scenario"):
            assert row[key] == direct[key].iloc[0]
        assert row["n_logged"] == len(direct)


def test_load_trajectories_long_table_carries_config(small_sweep):
    frame = load_trajectories(small_sweep)
    steps, probes = row_steps(40, 10)  # logged at t = 1, 10, 20, 30, 40, and the tail probes
    assert len(frame) == 8 * len(steps)
    assert {"run", "job", "lr", "num_mc", "seed", "step", "probe", "kl", "kl_excess", "sigma_min"} <= set(frame.columns)
    one = frame.query("lr == 0.05 and num_mc == 4 and seed == 1")
    assert one["step"].tolist() == steps.tolist() and one.loc[~one["probe"], "step"].tolist() == [1, 10, 20, 30, 40]


def test_corrupt_truncated_and_partial_files_are_skipped_with_one_warning_each(small_sweep, tmp_path):
    import shutil

    sweep_dir = tmp_path / "sweep"
    shutil.copytree(small_sweep, sweep_dir, ignore=shutil.ignore_patterns("baselines", "report"))
    (sweep_dir / "2" / "metrics.parquet").write_bytes(b"not a parquet file at all")
    data = (sweep_dir / "5" / "metrics.parquet").read_bytes()
    (sweep_dir / "5" / "metrics.parquet").write_bytes(data[: len(data) // 2])
    (sweep_dir / "9" / ".hydra").mkdir(parents=True)  # a job that never wrote its file
    with pytest.warns(SkippedFileWarning) as caught:
        sweep = read_sweep(sweep_dir)
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 3 and all("\n" not in m for m in messages)
    assert messages[0].startswith("1 job directories") and messages[0].endswith("(unfinished runs, left out): 9")
    assert str(sweep_dir / "2" / "metrics.parquet") in messages[1]
    assert str(sweep_dir / "5" / "metrics.parquet") in messages[2]
    assert len(sweep.runs) == 6 and [path for path, _ in sweep.skipped] == ["2/metrics.parquet", "5/metrics.parquet"]
    assert sweep.unfinished == ("9",)


def test_missing_or_empty_sweep_dir_is_a_one_line_error(tmp_path):
    with pytest.raises(SweepError, match="does not exist"):
        read_sweep(tmp_path / "nope")
    with pytest.raises(SweepError, match="no readable metrics.parquet"):
        read_sweep(tmp_path)


# ---------------------------------------------------------------------------------------------
# Exact baselines
# ---------------------------------------------------------------------------------------------


def test_missing_baselines_are_computed_match_the_notebooks_exact_loop_and_are_cached(small_sweep, monkeypatch):
    sweep = read_sweep(small_sweep)
    references = exact_baselines(sweep)
    assert len(references.baselines) == 2  # one per lr: num_mc and seed do not matter
    assert set(references.baselines["source"]) == {"computed"}
    assert references.per_run.groupby("baseline").size().tolist() == [4, 4]
    for baseline, lr in zip(references.baselines["baseline"], sorted(sweep.runs["lr"].unique())):
        members = sweep.runs[references.per_run["baseline"].to_numpy() == baseline]
        assert set(members["lr"]) == {lr}
        rows = references.trajectories[references.trajectories["run"] == baseline]
        notebook = reference_rows(mode="exact", d=5, steps=40, lr=lr, init_log_sigma=-2.0, log_every=10, also=set(rows["step"]))
        np.testing.assert_allclose(rows["kl"], notebook["kl"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(rows["sigma_mean"], notebook["sigma_mean"], rtol=1e-4)  # float32: the trainer's KL is written differently
    assert len(list((small_sweep / "baselines").glob("*/metrics.parquet"))) == 2

    def no_training(_):
        raise AssertionError("a cached baseline was recomputed")

    monkeypatch.setattr(baseline_module, "_train", no_training)
    again = exact_baselines(sweep)
    pd.testing.assert_frame_equal(again.trajectories, references.trajectories)
    pd.testing.assert_frame_equal(again.baselines, references.baselines)


def test_a_damaged_cache_entry_is_recomputed(small_sweep, tmp_path):
    import shutil

    sweep_dir = tmp_path / "sweep"
    shutil.copytree(small_sweep, sweep_dir)
    fresh = exact_baselines(read_sweep(sweep_dir))
    for path in (sweep_dir / "baselines").glob("*/metrics.parquet"):
        path.write_bytes(b"garbage")
    again = exact_baselines(read_sweep(sweep_dir))
    pd.testing.assert_frame_equal(again.trajectories, fresh.trajectories)


def test_an_exact_run_in_the_sweep_is_the_baseline(tmp_path):
    # Same compiled shapes as small_sweep (4 MC runs per spec, 2 exact runs): no new compilation.
    base = dict(composed_fields(), **SMALL)
    mc = grid(dict(base, num_mc=4), {"lr": (0.05, 0.2), "seed": (0, 1)})
    exact = grid(dict(base, objective="exact", seed=3), {"lr": (0.05, 0.2)})
    write_sweep(tmp_path, mc + exact)
    sweep = read_sweep(tmp_path)
    references = exact_baselines(sweep, cache=False)
    assert references.baselines["source"].tolist() == ["sweep", "sweep"]
    assert references.per_run["baseline"].tolist() == [0, 0, 1, 1, 0, 1]  # by lr
    for run, baseline in ((4, 0), (5, 1)):
        exact_rows = sweep.trajectories[sweep.trajectories["run"] == run]["kl"].to_numpy()
        mine = references.trajectories[references.trajectories["run"] == baseline]["kl"].to_numpy()
        np.testing.assert_array_equal(mine, exact_rows)
    assert not (tmp_path / "baselines").exists()
    runs = classify(sweep, references)
    assert (runs.loc[[4, 5], "excess_over_exact"] == 0.0).all() and set(runs["baseline_source"]) == {"sweep"}


def test_target_constants_are_the_closed_forms():
    d, s = 6, -2.0
    standard, correlated, ill = target_constants(
        [
            dict(target="standard_normal", d=d, init_log_sigma=s),
            dict(target="correlated", target_rho=0.5, d=d, init_log_sigma=s),
            dict(target="ill_conditioned", target_condition=100.0, d=d, init_log_sigma=s),
        ]
    ).itertuples(index=False)
    assert standard.init_kl_excess == pytest.approx(0.5 * d * (np.exp(2 * s) - 2 * s - 1), rel=1e-5)
    assert standard.kl_floor == 0.0 and standard.sigma_star_min == 1.0
    cov = 0.5 * np.eye(d) + 0.5 * np.ones((d, d))  # dense numpy reference for the correlated target
    precision = np.linalg.inv(cov)
    floor = 0.5 * (np.sum(np.log(np.diag(precision))) + np.linalg.slogdet(cov)[1])
    assert correlated.kl_floor == pytest.approx(floor, rel=1e-4)
    q = np.full(d, np.exp(2 * s))
    init = 0.5 * (np.sum(np.diag(precision) * q) - d + np.linalg.slogdet(cov)[1] - np.sum(np.log(q)))
    assert correlated.init_kl_excess + correlated.kl_floor == pytest.approx(init, rel=1e-4)
    assert correlated.sigma_star_min == pytest.approx(np.sqrt(1.0 / precision[0, 0]), rel=1e-6)  # sigma_i*^2 = 1/P_ii
    assert ill.sigma_star_min == pytest.approx(0.1, rel=1e-5)


TARGET_CASES = [
    ("standard_normal", {}),
    ("ill_conditioned", {"condition": 100.0}),
    ("ill_conditioned", {"condition": 1e4}),
    ("ill_conditioned", {}),  # the builder's default
    ("correlated", {"rho": 0.5}),
    ("correlated", {"rho": 0.9}),
    ("correlated", {}),
    ("shifted", {"offset": 3.0}),
    ("shifted", {}),
]


def test_the_numpy_targets_mirror_every_builder_of_vi_sweep_targets():
    from vi_sweep.core.targets import TARGETS, make_target

    from vi_sweep.core.regression import POSTERIORS

    # A new target needs its numpy twin: a Gaussian's here, a regression posterior's in vi_sweep.core.regression.
    assert {name for name, _ in TARGET_CASES} | set(POSTERIORS) == set(TARGETS)
    for name, params in TARGET_CASES:
        for d in (1, 2, 7, 100):
            target = make_target(name, d, **params)
            mean, diag, shared = target_structure(name, d, params)
            np.testing.assert_allclose(mean, np.asarray(target.mean), rtol=1e-6)
            np.testing.assert_allclose(diag, np.asarray(target.diag), rtol=1e-6)
            assert shared == pytest.approx(float(target.shared), rel=1e-6)
    with pytest.raises(ValueError, match="unknown target"):
        target_structure("banana", 3, {})


@pytest.mark.parametrize("name,params", TARGET_CASES)
def test_numpy_target_constants_equal_the_float32_jax_methods(name, params):
    import jax.numpy as jnp

    from vi_sweep.core.targets import make_target

    for d in (1, 7, 100, 1000):
        for s in (-3.0, -2.0, 0.0, 0.7):
            fields = dict(target=name, d=d, init_log_sigma=s, **{f"target_{k}": v for k, v in params.items()})
            ours = target_constants([fields]).iloc[0]
            target = make_target(name, d, **params)
            init = float(target.kl_excess(jnp.zeros((d,)), jnp.full((d,), s)))
            assert ours.init_kl_excess == pytest.approx(init, rel=2e-6, abs=1e-6)
            assert ours.kl_floor == pytest.approx(float(target.kl_floor()), rel=2e-6, abs=1e-6)
            _, log_sigma_star = target.meanfield_optimum()
            assert ours.sigma_star_min == pytest.approx(float(jnp.exp(jnp.min(log_sigma_star))), rel=1e-6)


def test_closed_form_kl_is_never_negative_and_accurate_near_the_optimum():
    d = 100
    for s in (1e-8, -1e-8, 1e-5, -1e-5, 0.0):
        init_kl, floor, _ = closed_form_constants(np.zeros(d), np.ones(d), 0.0, s)
        x = 2.0 * float(np.float32(s))
        assert init_kl >= 0.0 and floor == 0.0
        assert init_kl == pytest.approx(0.5 * d * (x * x / 2 + x**3 / 6), rel=1e-6, abs=0.0)
    for name, params in TARGET_CASES:  # at the optimum log sigma of coordinate 0
        mean, diag, shared = target_structure(name, 50, params)
        inv_diag = 1.0 / diag
        c = shared / (1.0 + shared * np.sum(inv_diag))
        s = 0.5 * (np.log(diag[0]) - np.log1p(-c * inv_diag[0]))
        init_excess, floor, _ = closed_form_constants(np.zeros(50), diag, shared, s)
        assert init_excess >= 0.0 and floor >= 0.0


def test_load_sweep_adds_outcomes_and_baseline_columns(small_sweep):
    runs = load_sweep(small_sweep)
    assert len(runs) == 8 and runs["outcome"].notna().all()
    for column in ("tail_kl", "tail_kl_excess", "baseline_tail_kl_excess", "excess_over_exact", "time_to_tol_ratio", "init_kl_excess", "tail_sigma_min", "reason"):
        assert column in runs.columns
    np.testing.assert_allclose(runs["excess_over_exact"], runs["tail_kl_excess"] - runs["baseline_tail_kl_excess"])
    assert json.loads(json.dumps(Thresholds().as_dict()))["tol_per_dim"] == 0.01


# ---------------------------------------------------------------------------------------------
# Phase table
# ---------------------------------------------------------------------------------------------


def _classified(outcomes: dict[tuple[float, int], list[str]]) -> pd.DataFrame:
    rows = []
    for (lr, num_mc), labels in outcomes.items():
        for seed, label in enumerate(labels):
            config = dict(objective="mc", optimizer="adam", lr=lr, num_mc=num_mc, seed=seed, d=D)
            statistics = dict(excess_over_exact=float(seed + 1), tail_kl=float(seed + 1), tail_sigma_min=0.5, time_to_tol_ratio=[1.0, 2.0, np.inf][seed % 3])
            rows.append(dict(**config, **statistics, outcome=label, baseline_tail_kl=0.0, baseline_outcome="converged"))
    frame = pd.DataFrame(rows)
    frame["outcome"] = pd.Categorical(frame["outcome"], categories=list(OUTCOMES))
    return frame


def test_phase_table_fractions_majority_and_columns():
    runs = _classified(
        {
            (0.05, 32): ["converged", "converged", "stalled"],
            (0.2, 1): ["stalled", "slow", "converged"],  # three-way tie: the worst wins
            (10.0, 1): ["diverged", "diverged", "diverged"],
        }
    )
    table = phase_table(runs)
    assert cell_keys(runs) == ["lr", "num_mc"]  # seed and constant keys are not cell keys
    assert table.columns[:3].tolist() == ["lr", "num_mc", "n_runs"]
    for name in OUTCOMES:
        assert f"frac_{name}" in table.columns
    assert np.allclose(table[[f"frac_{o}" for o in OUTCOMES]].sum(axis=1), 1.0)
    good = table.set_index(["lr", "num_mc"]).loc[(0.05, 32)]
    assert good["frac_converged"] == pytest.approx(2 / 3) and good["outcome"] == "converged"
    assert good["outcome_frac"] == pytest.approx(2 / 3)
    assert table.set_index(["lr", "num_mc"]).loc[(0.2, 1), "outcome"] == "stalled"
    assert table["excess_over_exact_median"].tolist() == [2.0, 2.0, 2.0]
    assert table["time_to_tol_ratio"].tolist() == [2.0, 2.0, 2.0]  # median of (1, 2, inf)
    assert [c["lr"] for c in example_cells(table, ["lr", "num_mc"])] == [0.05, 0.2, 10.0]


def test_bootstrap_interval_of_the_median_has_the_exact_answer_for_three_values():
    # Resampling (1, 2, 3): P(median = 1) = P(median = 3) = 7/27 > 2.5%, so the 95% interval is [1, 3].
    low, high = bootstrap_median_interval(np.array([1.0, 2.0, 3.0]), rng=np.random.default_rng(0))
    assert (low, high) == (1.0, 3.0)
    low, high = bootstrap_median_interval(np.array([5.0] * 4 + [np.nan]), rng=np.random.default_rng(0))
    assert (low, high) == (5.0, 5.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflowed KL (inf) must not turn the bounds into NaN
        low, high = bootstrap_median_interval(np.array([1.0, np.inf, np.inf]), rng=np.random.default_rng(0))
    assert (low, high) == (1.0, np.inf)


def test_phase_table_is_deterministic_and_a_cells_interval_ignores_other_cells():
    runs = _classified({(0.05, 32): ["converged"] * 3, (0.2, 1): ["stalled"] * 3})
    runs.loc[runs["lr"] == 0.2, "excess_over_exact"] = [1.0, 7.0, 30.0]
    alone = phase_table(runs[runs["lr"] == 0.2])
    together = phase_table(runs)
    assert together.iloc[1]["excess_over_exact_lo"] == alone.iloc[0]["excess_over_exact_lo"]
    assert together.iloc[1]["excess_over_exact_hi"] == alone.iloc[0]["excess_over_exact_hi"]
    pd.testing.assert_frame_equal(phase_table(runs), together)


def test_classify_emits_no_runtime_warnings_on_a_fully_non_finite_run():
    sweep, references = synthetic_sweep([dict(kl=np.full(len(STEPS), np.nan), sigma_min=np.nan, baseline_kl=CONVERGED_BASELINE)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        runs = classify(sweep, references)
    assert runs["outcome"].iloc[0] == "diverged"


def test_cell_keys_ignore_hyperparameters_implied_by_the_optimizer():
    runs = pd.DataFrame(
        {
            "objective": "mc",
            "optimizer": ["adam", "adam", "sgd", "sgd", "adam", "adam"],
            "optimizer_b1": [0.9, 0.9, np.nan, np.nan, 0.9, 0.9],  # adam's only: not a swept key
            "optimizer_grad_clip": [None, None, None, None, 1.0, 1.0],  # swept within adam
            "lr": 0.1,
            "num_mc": 1,
            "seed": [0, 1, 0, 1, 0, 1],
        }
    )
    assert cell_keys(runs) == ["optimizer", "optimizer_grad_clip", "lr", "num_mc"]


def test_the_interval_coverage_is_the_exact_order_statistic_probability():
    from vi_sweep.analysis.phase import bootstrap_median_interval, order_statistic_coverage

    values = np.array([3.0, 1.0, 2.0])
    low, high = bootstrap_median_interval(values, rng=np.random.default_rng(0))
    assert (low, high) == (1.0, 3.0)
    assert order_statistic_coverage(values, low, high) == pytest.approx(0.75)
    # n = 10, [x(2), x(9)]: P(2 <= B <= 8), B ~ Bin(10, 1/2) = 1 - 2 * (1 + 10) / 1024.
    ten = np.arange(10.0)
    assert order_statistic_coverage(ten, 1.0, 8.0) == pytest.approx(1 - 22 / 1024)
    # ...and it is what a simulation measures for the bootstrap interval itself.
    rng = np.random.default_rng(1)
    hits = 0
    for _ in range(400):
        sample = rng.normal(size=3)
        lo, hi = bootstrap_median_interval(sample, n_boot=200, rng=rng)
        hits += lo <= 0.0 <= hi
    assert hits / 400 == pytest.approx(0.75, abs=0.07)
