r"""Design matrices and responses for the regression targets: shipped real data, or synthetic from a seed.

NumPy only (no JAX): the trainer bakes a dataset into its program as a constant, and the
analysis solves for the mean-field optimum on the same numbers without starting JAX.

Every dataset is returned the same way (:class:`Dataset`): ``features`` is ``(n, d)`` with an
intercept column of ones first, then the features standardised to mean 0 and (population)
standard deviation 1; ``response`` is ``(n,)``, 0/1 labels or counts. Both are float64 arrays
holding float32 values (rounded once here), so the float32 trainer and the float64 solver of
:mod:`vi_sweep.core.regression` see exactly the same data.

Real datasets (:data:`REAL_DATASETS`; files, sources and licences in ``vi_sweep/core/data/``):

- ``breast_cancer``: UCI Breast Cancer Wisconsin (Diagnostic), 569 x 30, binary (1 = benign).
- ``randhie``: RAND Health Insurance Experiment, 20,190 x 9, counts of outpatient visits.

``synthetic``: ``num_rows`` rows of ``d - 1`` equicorrelated Gaussian features (pairwise correlation
``feature_correlation``: :math:`x = \sqrt{1-\rho}\,g + \sqrt\rho\,g_0` with one shared
:math:`g_0` per row), standardised, and a response drawn from the model itself with coefficients
:math:`\beta_j \sim \mathcal N(0, 1/(d-1))` (so the linear predictor has variance about 1):
Bernoulli(sigmoid(x^T beta)) labels, or Poisson(exp(1 + x^T beta)) counts (intercept 1: a mean
count of about e). Everything is drawn from ``numpy.random.default_rng(data_seed)``.
"""

from __future__ import annotations

import functools
import gzip
import io
from importlib import resources
from typing import NamedTuple

import numpy as np

BINARY, COUNT = "binary", "count"
"""The kinds of response: 0/1 labels (logistic regression) or counts (Poisson regression)."""
SYNTHETIC = "synthetic"


class RealDataset(NamedTuple):
    """A dataset shipped in ``vi_sweep/core/data/``: its file, response kind and shape."""

    file: str
    response: str  # BINARY | COUNT
    rows: int
    features: int  # without the intercept


REAL_DATASETS: dict[str, RealDataset] = {
    "breast_cancer": RealDataset("breast_cancer.csv", BINARY, 569, 30),
    "randhie": RealDataset("randhie.csv.gz", COUNT, 20190, 9),
}
DATASETS = (SYNTHETIC, *REAL_DATASETS)
"""Every ``target.dataset`` option."""


class Dataset(NamedTuple):
    """A regression dataset, ready for a GLM: intercept first, features standardised."""

    features: np.ndarray  # shape=(n, d), float64 holding float32 values; column 0 is all ones
    response: np.ndarray  # shape=(n,), float64: 0/1 or counts


def dataset_width(name: str, d: int) -> int:
    """The number of coefficients (``d``, intercept included) a run on dataset ``name`` has.

    A real dataset fixes it (its features + 1); the synthetic one takes the run's ``d``.
    """
    if name == SYNTHETIC:
        return d
    return REAL_DATASETS[name].features + 1


def datasets_for(response: str) -> tuple[str, ...]:
    """The dataset options whose response is of kind ``response`` (the synthetic one fits both)."""
    return (SYNTHETIC, *(name for name, info in REAL_DATASETS.items() if info.response == response))


def standardise_with_intercept(raw: np.ndarray) -> np.ndarray:
    """``[1, (raw - mean) / std]`` column-wise (population std), rounded to float32 values."""
    centred = raw - raw.mean(axis=0)
    scaled = centred / centred.std(axis=0)
    return _as_float32_values(np.concatenate([np.ones((raw.shape[0], 1)), scaled], axis=1))


def _as_float32_values(x: np.ndarray) -> np.ndarray:
    out = np.asarray(x, np.float32).astype(np.float64)
    out.flags.writeable = False  # cached and shared: nobody may change it
    return out


def read_real(name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(raw features, response)`` of a shipped dataset as float64, columns as in the file
    (the response is the last column of ``breast_cancer`` and the first of ``randhie``)."""
    info = REAL_DATASETS[name]
    data = resources.files("vi_sweep.core").joinpath("data", info.file).read_bytes()
    if info.file.endswith(".gz"):
        data = gzip.decompress(data)
    table = np.loadtxt(io.StringIO(data.decode()), delimiter=",", skiprows=1, dtype=np.float64)
    if name == "randhie":
        return table[:, 1:], table[:, 0]
    return table[:, :-1], table[:, -1]


def synthetic(response: str, d: int, num_rows: int, feature_correlation: float, data_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(features with intercept, response)`` drawn as the module docstring says."""
    rng = np.random.default_rng(data_seed)
    n, p = num_rows, d - 1
    own = rng.standard_normal((n, p))
    shared = rng.standard_normal((n, 1))
    raw = np.sqrt(1.0 - feature_correlation) * own + np.sqrt(feature_correlation) * shared
    features = standardise_with_intercept(raw) if p > 0 else _as_float32_values(np.ones((n, 1)))
    beta = rng.standard_normal(p) / np.sqrt(max(p, 1))
    predictor = features[:, 1:] @ beta
    if response == BINARY:
        labels = (rng.uniform(size=n) < 1.0 / (1.0 + np.exp(-predictor))).astype(np.float64)
        return features, labels
    return features, rng.poisson(np.exp(1.0 + predictor)).astype(np.float64)


@functools.lru_cache(maxsize=16)
def load_dataset(name: str, response: str, d: int, num_rows: int = 500, feature_correlation: float = 0.0, data_seed: int = 0) -> Dataset:
    """The dataset ``name`` for a GLM with a ``response`` (BINARY | COUNT) and ``d`` coefficients.

    ``num_rows``, ``feature_correlation`` and ``data_seed`` shape the synthetic dataset only. Raises
    ``ValueError`` (one line) for an unknown name, a real dataset of the other response kind, or
    a ``d`` that is not the real dataset's width (:func:`dataset_width`). Cached: the arrays are
    shared and read-only.
    """
    if name == SYNTHETIC:
        features, labels = synthetic(response, d, num_rows, feature_correlation, data_seed)
    else:
        if name not in REAL_DATASETS:
            raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
        info = REAL_DATASETS[name]
        if info.response != response:
            raise ValueError(f"dataset {name} has a {info.response} response; a {response} model needs one of {', '.join(datasets_for(response))}")
        if d != dataset_width(name, d):
            raise ValueError(f"dataset {name} has {info.features} features and an intercept: d must be {info.features + 1}, not {d}")
        raw, labels = read_real(name)
        features = standardise_with_intercept(raw)
    labels = np.asarray(labels, np.float64)
    labels.flags.writeable = False
    return Dataset(features, labels)
