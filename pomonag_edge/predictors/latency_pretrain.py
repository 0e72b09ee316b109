"""The latency embedding of a space, pretrained on its shipped multi-device tables.

``pretrain_embedding`` trains the space's embedding (its ``latency_recipe``) with one linear head per device;
``train_latency_checkpoint`` makes the shipped checkpoint's content and ``load_pretrained`` loads it as a
``PretrainedEmbedding``: the embedding, the training devices' heads and the head prior, which hand the few-shot
fit (``fewshot``) its features, sibling tables and mixture prior.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..checkpoints import checkpoint_path, load_built
from ..errors import UserError
from .fewshot import mixture_prior

DEVICE_COV_SCALE = 0.03  # each training device's component: its head, covariance 0.03 x the population's


def fit_embedding_heads(emb, dim: int, inputs: tuple, latency_ms: np.ndarray, *, steps: int, batch: int, lr: float,
                        gen, weight_decay: float = 0.0, progress=None):
    """Train ``emb(*inputs)`` (each input: one row per net) with one linear head per column of ``latency_ms``:
    Huber on per-column standardized log-ms, NaN cells ignored. Returns ``emb`` in eval mode."""
    import torch

    logy = np.log(latency_ms)
    mean, std = np.nanmean(logy, axis=0), np.nanstd(logy, axis=0)
    z = torch.from_numpy(np.nan_to_num((logy - mean) / std, nan=0.0)).float()
    mask = torch.from_numpy(np.isfinite(logy)).float()
    heads = torch.nn.Linear(dim, logy.shape[1])
    opt = torch.optim.Adam(list(emb.parameters()) + list(heads.parameters()), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for step in range(steps):
        idx = torch.randint(0, len(inputs[0]), (batch,), generator=gen)
        pred = heads(emb(*(v[idx] for v in inputs)))
        loss = (torch.nn.functional.huber_loss(pred, z[idx], reduction="none", delta=1.0) * mask[idx]).sum()
        loss = loss / mask[idx].sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if progress is not None:
            progress(step + 1, steps, loss.item())
    emb.eval()
    return emb


def pretrain_embedding(space, archs, latency_ms: np.ndarray, *, dim: int, hidden: int, steps: int, seed: int = 0,
                       batch: int | None = None, progress=None):
    """The space's embedding (``latency_recipe``) and one head per column of ``latency_ms`` (archs x devices),
    trained from ``seed``. Returns (embedding in eval mode, its config)."""
    import torch

    recipe = space.latency_recipe
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    archs = list(archs)
    config = recipe.config_for(archs, dim, hidden)
    inputs = recipe.inputs(archs)
    emb = recipe.build(config)
    fit_embedding_heads(emb, emb.dim, inputs, latency_ms, steps=steps, batch=batch or recipe.batch, lr=recipe.lr,
                        gen=gen, weight_decay=recipe.weight_decay, progress=progress)
    return emb, config


def embed(space, emb, archs) -> np.ndarray:
    """phi of ``archs``, float64 (n, dim)."""
    import torch

    with torch.no_grad():
        return emb(*space.latency_recipe.inputs(list(archs))).double().numpy()


def proxy_features(space, archs) -> np.ndarray:
    """(n, 1) log MACs: the cost proxy every space has (``space.macs``), the input of ``fewshot.PROXIES``."""
    return np.array([[math.log(max(space.macs(a), 1))] for a in archs], dtype=np.float64).reshape(-1, 1)


def head_design(phi: np.ndarray) -> np.ndarray:
    """``[phi, 1]``: the design a device head ``[w_d, b_d]`` is linear in."""
    return np.hstack([phi, np.ones((len(phi), 1))])


def fit_heads(space, archs, phi: np.ndarray, latency_ms: np.ndarray) -> np.ndarray:
    """Least-squares heads ``[w_d, b_d]`` in raw log-ms per device column: (D, dim + 1). Invalid nets (output
    independent of the input) are left out: never deployed, and timed at ~0 ms where timed at all."""
    valid = np.array([space.is_valid(a) for a in archs])
    design = head_design(phi)
    heads = []
    for col in np.log(latency_ms).T:
        ok = np.isfinite(col) & valid
        heads.append(np.linalg.lstsq(design[ok], col[ok], rcond=None)[0])
    return np.array(heads)


def head_prior(heads: np.ndarray, floor: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of the training devices' heads; ``floor`` (fraction of the mean variance) on the
    diagonal lets a device unlike the few training ones still move."""
    mean = heads.mean(axis=0)
    cov = np.cov(heads, rowvar=False)
    jitter = floor * np.mean(np.diag(cov)) if floor else 1e-6
    return mean, cov + jitter * np.eye(len(mean))


def rank_metrics(pred_ms: np.ndarray, true_ms: np.ndarray) -> dict:
    from scipy.stats import kendalltau, spearmanr

    rel = np.abs(pred_ms / true_ms - 1)
    return {"spearman": float(spearmanr(pred_ms, true_ms)[0]), "kendall": float(kendalltau(pred_ms, true_ms)[0]),
            "mape": float(rel.mean()), "rel_err_q90": float(np.quantile(rel, 0.9))}


@dataclass
class PretrainedEmbedding:
    """A loaded latency embedding of one space, its training devices' heads and the head prior; ``sha256``
    names the checkpoint it came from. ``heldout``: per device, the error of its head on nets held out of an
    identical fit (the margin of a reference profile whose table does not cover the space)."""

    space: object
    embedding: object
    devices: list[str]
    heads: np.ndarray
    prior_mean: np.ndarray
    prior_cov: np.ndarray
    sha256: str = ""
    file: str = ""
    heldout: dict = field(default_factory=dict)
    _phi_all: np.ndarray | None = field(default=None, repr=False)
    _tables_ms: np.ndarray | None = field(default=None, repr=False)
    _fill: np.ndarray | None = field(default=None, repr=False)
    _proxies_all: np.ndarray | None = field(default=None, repr=False)
    _features_all: np.ndarray | None = field(default=None, repr=False)
    _proxy_memo: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_checkpoint(cls, space, ckpt: dict, sha256: str = "", file: str = "") -> "PretrainedEmbedding":
        emb = space.latency_recipe.build(ckpt["config"])
        emb.load_state_dict(ckpt["state_dict"])
        emb.eval()
        return cls(space, emb, list(ckpt["devices"]), ckpt["heads"].double().numpy(),
                   ckpt["prior_mean"].double().numpy(), ckpt["prior_cov"].double().numpy(), sha256, file,
                   heldout=dict(ckpt.get("heldout", {})))

    @classmethod
    def from_tables(cls, space, archs, ms: np.ndarray, names: Sequence[str], **train_kw) -> "PretrainedEmbedding":
        """Pretrain on the given archs x devices (a few-shot benchmark's per-fold step; the tests')."""
        recipe = space.latency_recipe
        kw = {**recipe.fold, **train_kw}
        archs = list(archs)
        emb, _ = pretrain_embedding(space, archs, ms, **kw)
        phi = embed(space, emb, archs)
        heads = fit_heads(space, archs, phi, ms)
        mean, cov = head_prior(heads, recipe.prior_floor)
        covers = recipe.covers_space and len(archs) == space.size()
        return cls(space, emb, list(names), heads, mean, cov, _phi_all=phi if covers else None,
                   _tables_ms=np.asarray(ms, dtype=np.float64) if covers else None)

    @property
    def covers_space(self) -> bool:
        return self.space.latency_recipe.covers_space

    def prior_components(self) -> list:
        """The head prior as mixture components ``(weight, mean, cov)``: the population Gaussian, and one
        narrow component per training device's head (see ``fewshot.mixture_head``)."""
        return mixture_prior(self.prior_mean, self.prior_cov, self.heads, DEVICE_COV_SCALE * self.prior_cov)

    def phi(self, archs) -> np.ndarray:
        """Embedding of ``archs``; where the tables cover the space, read from its whole-space table (computed once)."""
        archs = list(archs)
        if not self.covers_space:
            return embed(self.space, self.embedding, archs)
        if self._phi_all is None:
            self._phi_all = embed(self.space, self.embedding, list(self.space.enumerate()))
        return self._phi_all[[self.space.table_index(a) for a in archs]]

    def proxies(self, archs) -> np.ndarray:
        """``proxy_features`` of ``archs`` (whole-space table once where the tables cover the space)."""
        archs = list(archs)
        if not self.covers_space:  # memoised per arch: exact MACs of a large space cost ~1 ms a net
            todo = [a for a in dict.fromkeys(archs) if a not in self._proxy_memo]
            self._proxy_memo.update(zip(todo, proxy_features(self.space, todo)))
            return np.array([self._proxy_memo[a] for a in archs], dtype=np.float64).reshape(-1, 1)
        if self._proxies_all is None:
            self._proxies_all = proxy_features(self.space, list(self.space.enumerate()))
        return self._proxies_all[[self.space.table_index(a) for a in archs]]

    @property
    def n_features(self) -> int:
        return len(self.feature_names())

    def feature_names(self) -> list[str]:
        """Names of the joint features every adapted model is linear in: embedding, bias, sibling tables (where
        they cover the space), log MACs."""
        dim = self.heads.shape[1] - 1
        tables = [f"table:{n}" for n in self.devices] if self.covers_space else []
        return [f"phi{i}" for i in range(dim)] + ["bias"] + tables + ["log_macs"]

    def joint_features(self, archs) -> np.ndarray:
        """(n, n_features) joint features of ``archs`` (see ``feature_names``)."""
        archs = list(archs)
        if self.covers_space:
            return self.features_all()[[self.space.table_index(a) for a in archs]]
        return np.hstack([head_design(self.phi(archs)), self.proxies(archs)])

    def features_all(self) -> np.ndarray:
        """Joint features of every net in ``table_index`` order (only where the tables cover the space), once."""
        if self._features_all is None:
            everything = list(self.space.enumerate())
            self._features_all = np.hstack([head_design(self.phi(everything)), self.sibling_tables(),
                                            self.proxies(everything)])
        return self._features_all

    def sibling_tables(self) -> np.ndarray:
        """(space size, D) log-ms of the training devices in ``table_index`` order, unmeasured cells filled by
        their heads. Only where the tables cover the space."""
        if self._fill is None:
            if self._tables_ms is None:
                ms = {n: self.space.reference_latency_ms(n) for n in self.devices}
                self._tables_ms = np.stack([ms[n] for n in self.devices], axis=1)
            log = np.log(self._tables_ms)
            if self._phi_all is None:
                self._phi_all = embed(self.space, self.embedding, list(self.space.enumerate()))
            head = head_design(self._phi_all) @ self.heads.T
            self._fill = np.where(np.isfinite(log), log, head)
        return self._fill


def train_latency_checkpoint(space, seed: int = 0, steps: int | None = None, dim: int | None = None,
                             hidden: int | None = None, devices: Sequence[str] | None = None, progress=None) -> dict:
    """The shipped checkpoint's content: embedding weights, every training device's head, the prior, and (where
    the tables do not cover the space) each device's held-out error, from a first fit on a seeded part of the
    nets (``heldout_fraction`` held out), before the final fit on all of them."""
    import torch

    recipe = space.latency_recipe
    kw = {"dim": dim or recipe.dim, "hidden": hidden or recipe.hidden, "steps": steps or recipe.steps, "seed": seed}
    archs, names, ms = recipe.tables()
    if devices is not None:
        ms = ms[:, [names.index(n) for n in devices]]
        names = list(devices)
    phases = 2 if recipe.heldout_fraction else 1
    phase = lambda k: None if progress is None else (lambda i, n, loss: progress(k * n + i, phases * n, loss))  # noqa: E731
    heldout = {}
    if recipe.heldout_fraction:
        perm = np.random.default_rng(seed).permutation(len(archs))
        held = np.zeros(len(archs), dtype=bool)
        held[perm[: int(recipe.heldout_fraction * len(archs))]] = True
        tr = np.flatnonzero(~held)
        emb, _ = pretrain_embedding(space, [archs[i] for i in tr], ms[tr], progress=phase(0), **kw)
        phi = embed(space, emb, archs)
        heads = fit_heads(space, [archs[i] for i in tr], phi[~held], ms[~held])
        pred = np.exp(head_design(phi[held]) @ heads.T)
        heldout = {n: {k: round(v, 4) for k, v in rank_metrics(pred[:, j], ms[held, j]).items()}
                   for j, n in enumerate(names)}
    emb, config = pretrain_embedding(space, archs, ms, progress=phase(phases - 1), **kw)
    heads = fit_heads(space, archs, embed(space, emb, archs), ms)
    mean, cov = head_prior(heads, recipe.prior_floor)
    ckpt = {
        "kind": "pomonag-edge/latency-embedding", "version": 1, "space": space.name, "config": config,
        "state_dict": emb.state_dict(), "devices": list(names),
        "heads": torch.from_numpy(heads), "prior_mean": torch.from_numpy(mean), "prior_cov": torch.from_numpy(cov),
        "meta": {"seed": seed, "steps": kw["steps"], "trained_on": recipe.source,
                 "command": f"pomonag-edge pretrain latency --space {space.name} --seed {seed}"},
    }
    if heldout:
        ckpt["heldout"], ckpt["meta"]["heldout_fraction"] = heldout, recipe.heldout_fraction
    return ckpt


def load_pretrained(space, path=None) -> PretrainedEmbedding:
    """The space's shipped latency embedding (or the checkpoint at ``path``), built once per process."""
    recipe = space.latency_recipe
    if recipe is None:
        raise UserError(f"space {space.name} ships no pretrained latency embedding")

    def build(ckpt, sha, file):
        return PretrainedEmbedding.from_checkpoint(space, ckpt, sha, file)

    return load_built(path or checkpoint_path(recipe.checkpoint), build, key=space.name)
