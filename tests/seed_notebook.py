"""The seed notebook's code cell, verbatim (../shared/seed/notebook.txt, In [11]).

An independent reference for the trainer: its per-step Python loop is what vi_sweep replaces.
``reference_rows`` below reuses ``step_mc``/``step_exact`` to collect the rows
instead of printing them.
"""

from functools import partial
import jax
import jax.numpy as jnp
import optax

LOG_2PI = jnp.log(2.0 * jnp.pi)

def kl_diag_standard_normal(mu, log_sigma):
    sigma2 = jnp.exp(2.0 * log_sigma)
    return 0.5 * jnp.sum(sigma2 + mu**2 - 2.0 * log_sigma - 1.0)

def mc_neg_elbo(key, mu, log_sigma, num_mc: int):
    d = mu.shape[0]
    eps = jax.random.normal(key, shape=(num_mc, d))
    sigma = jnp.exp(log_sigma)
    z = mu[None, :] + sigma[None, :] * eps

    logp = -0.5 * jnp.sum(z**2, axis=-1) - 0.5 * d * LOG_2PI
    logq = -0.5 * jnp.sum(eps**2, axis=-1) - jnp.sum(log_sigma) - 0.5 * d * LOG_2PI
    return -jnp.mean(logp - logq)

@partial(jax.jit, static_argnames=("optimizer",))
def step_exact(opt_state, params, optimizer):
    mu, log_sigma = params
    loss, grads = jax.value_and_grad(kl_diag_standard_normal, argnums=(0, 1))(mu, log_sigma)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return opt_state, params, loss

@partial(jax.jit, static_argnames=("optimizer", "num_mc"))
def step_mc(key, opt_state, params, optimizer, num_mc: int):
    mu, log_sigma = params
    key, subkey = jax.random.split(key)

    def loss_fn(mu_, log_sigma_):
        return mc_neg_elbo(subkey, mu_, log_sigma_, num_mc)

    loss, grads = jax.value_and_grad(loss_fn, argnums=(0, 1))(mu, log_sigma)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return key, opt_state, params, loss


def run(mode: str = "mc", seed: int = 0, d: int = 100, steps: int = 2000,
        lr: float = 1e-2, num_mc: int = 8, init_log_sigma: float = -2.0, log_every: int = 200):
    """
    mode: "exact" or "mc"
    """
    key = jax.random.key(seed)

    mu = jnp.zeros((d,))
    log_sigma = jnp.ones((d,)) * init_log_sigma
    params = (mu, log_sigma)

    optimizer = optax.adam(lr)
    opt_state = optimizer.init(params)

    means = []
    stds = []
    ts = []
    for t in range(1, steps + 1):
        if mode == "exact":
            opt_state, params, loss = step_exact(opt_state, params, optimizer)
        elif mode == "mc":
            key, opt_state, params, loss = step_mc(key, opt_state, params, optimizer, num_mc)
        else:
            raise ValueError("mode must be 'exact' or 'mc'")

        if (t % log_every) == 0 or t == 1:
            mu, log_sigma = params
            sigma = jnp.exp(log_sigma)
            kl = kl_diag_standard_normal(mu, log_sigma)
            print(
                f"t={t:5d}  loss={float(loss): .6f}  KL={float(kl): .6f}  "
                f"|mu|={float(jnp.linalg.norm(mu)):.4f}  "
                f"mean(sigma)={float(jnp.mean(sigma)):.4f}  std(sigma)={float(jnp.std(sigma)):.4f}  "
                f"min(sigma)={float(jnp.min(sigma)):.4e}"
            )
            means.append(jnp.mean(sigma))
            stds.append(jnp.std(sigma))
            ts.append(t)

    return params, means, stds, ts


def reference_rows(mode="mc", seed=0, d=100, steps=2000, lr=1e-2, num_mc=8, init_log_sigma=-2.0, log_every=200, also=()):
    """The notebook's loop, returning its logged rows as a dict of lists instead of printing
    (and the rows of the steps in ``also``: the same loop, looked at more often)."""
    import numpy as np

    key = jax.random.key(seed)
    params = (jnp.zeros((d,)), jnp.ones((d,)) * init_log_sigma)
    optimizer = optax.adam(lr)
    opt_state = optimizer.init(params)
    rows = {k: [] for k in ("step", "loss", "kl", "mu_norm", "sigma_mean", "sigma_std", "sigma_min")}
    for t in range(1, steps + 1):
        if mode == "exact":
            opt_state, params, loss = step_exact(opt_state, params, optimizer)
        else:
            key, opt_state, params, loss = step_mc(key, opt_state, params, optimizer, num_mc)
        if (t % log_every) == 0 or t == 1 or t in also:
            mu, log_sigma = params
            sigma = jnp.exp(log_sigma)
            rows["step"].append(t)
            rows["loss"].append(float(loss))
            rows["kl"].append(float(kl_diag_standard_normal(mu, log_sigma)))
            rows["mu_norm"].append(float(jnp.linalg.norm(mu)))
            rows["sigma_mean"].append(float(jnp.mean(sigma)))
            rows["sigma_std"].append(float(jnp.std(sigma)))
            rows["sigma_min"].append(float(jnp.min(sigma)))
    return {k: np.asarray(v) for k, v in rows.items()}
