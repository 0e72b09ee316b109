"""How a space's encoding splits into categorical groups: the genes NSGA-II mutates, the tokens the score
network attends over, and (MobileNetV3) which slot features a depth switches off.

Every encoding is read flattened, ``(n, prod(encoding_shape))``, as contiguous one-hot groups:

- NB201 ``(6, 5)``: 6 groups of 5 (one op per edge); genes = tokens = the 6 edges.
- MobileNetV3 ``(160,)``: genes are the 46 categorical choices (20 kernels and 20 expand ratios of 3, 5
  stage depths of 3, one resolution of 25); tokens are 26: one per block slot (its kernel and expand
  one-hots together, 6 wide, so attention sees a block as one unit, as NB201 sees an edge), one per stage
  depth (3 wide) and one for the resolution (25 wide). A slot token sits next to its stage's depth token
  in attention, which is what lets the network learn that a depth-2 stage leaves slots 3 and 4 unused.

A space may declare ``categorical_groups`` / ``token_groups`` itself; otherwise they are derived here.
"""

from __future__ import annotations

import numpy as np

Groups = list[tuple[int, int]]  # (offset, width) over the flattened encoding


def _mbv3():
    from ..spaces import mbv3

    return mbv3


def categorical_groups(space) -> Groups:
    """One group per categorical choice; one-hot (or all zero, for an unused MBV3 slot) in an encoding."""
    if hasattr(space, "categorical_groups"):
        return list(space.categorical_groups)
    if space.name == "mbv3":
        m = _mbv3()
        nk, ne = len(m.KERNELS), len(m.EXPANDS)
        groups = []
        for i in range(m.NUM_SLOTS):
            groups += [(i * m.SLOT_FEATURES, nk), (i * m.SLOT_FEATURES + nk, ne)]
        groups += [(m.DEPTH_OFFSET + s * len(m.DEPTHS), len(m.DEPTHS)) for s in range(m.NUM_STAGES)]
        return groups + [(m.RES_OFFSET, len(m.RESOLUTIONS))]
    if len(space.encoding_shape) == 2:
        slots, choices = space.encoding_shape
        return [(i * choices, choices) for i in range(slots)]
    raise ValueError(f"no categorical layout known for space {space.name} with encoding {space.encoding_shape}")


def token_groups(space) -> Groups:
    """The score network's tokens (see the module docstring)."""
    if hasattr(space, "token_groups"):
        return list(space.token_groups)
    if space.name == "mbv3":
        m = _mbv3()
        groups = [(i * m.SLOT_FEATURES, m.SLOT_FEATURES) for i in range(m.NUM_SLOTS)]
        groups += [(m.DEPTH_OFFSET + s * len(m.DEPTHS), len(m.DEPTHS)) for s in range(m.NUM_STAGES)]
        return groups + [(m.RES_OFFSET, len(m.RESOLUTIONS))]
    return categorical_groups(space)


def gene_choices(space) -> np.ndarray:
    """Number of values of every gene, shape (genes,)."""
    return np.array([w for _, w in categorical_groups(space)], dtype=np.int64)


def to_genes(space, x: np.ndarray) -> np.ndarray:
    """Encodings (n, *encoding_shape) -> genes (n, genes): the argmax of every group (0 for an all-zero one)."""
    flat = np.asarray(x).reshape(len(x), -1)
    return np.stack([flat[:, o:o + w].argmax(1) for o, w in categorical_groups(space)], axis=1)


def from_genes(space, genes: np.ndarray) -> np.ndarray:
    """Genes (n, genes) -> one-hot encodings (n, *encoding_shape) that ``space.decode`` reads back."""
    genes = np.asarray(genes, dtype=np.int64)
    dim = int(np.prod(space.encoding_shape))
    x = np.zeros((len(genes), dim), dtype=np.float32)
    rows = np.arange(len(genes))
    for g, (o, w) in enumerate(categorical_groups(space)):
        x[rows, o + genes[:, g]] = 1.0
    return x.reshape(len(genes), *space.encoding_shape)


def slot_usage_matrix(space) -> tuple[np.ndarray, np.ndarray] | None:
    """MobileNetV3's depth masking as two arrays, or None for a space without it.

    Returns ``(depth_feature_index (stages, depths), use (features, stages, depths))``: feature f is used
    when the depth of some stage s is d and ``use[f, s, d]`` is 1; depth and resolution features are
    always used (their rows are 1 for every depth of stage 0). With soft per-stage depth probabilities p
    (stages, depths), ``usage_f = sum_{s,d} use[f, s, d] * p[s, d]`` for slot features, 1 otherwise.
    """
    if space.name != "mbv3":
        return None
    m = _mbv3()
    nd = len(m.DEPTHS)
    depth_idx = np.array([[m.DEPTH_OFFSET + s * nd + j for j in range(nd)] for s in range(m.NUM_STAGES)])
    use = np.zeros((m.ENCODING_DIM, m.NUM_STAGES, nd), dtype=np.float32)
    for f in range(m.ENCODING_DIM):
        if f < m.DEPTH_OFFSET:
            slot = f // m.SLOT_FEATURES
            stage, pos = divmod(slot, m.MAX_DEPTH)
            use[f, stage] = [1.0 if pos < d else 0.0 for d in m.DEPTHS]
        else:
            use[f, 0] = 1.0  # probabilities of stage 0's depths sum to one
    return depth_idx, use
