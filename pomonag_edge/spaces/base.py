"""What every search space offers; the generator, predictors, profiler and exporter speak only this."""

from __future__ import annotations

from typing import TYPE_CHECKING, Hashable, Iterable, Iterator, Protocol, Sequence, runtime_checkable

import numpy as np

if TYPE_CHECKING:  # torch is imported only where a network is built
    import torch.nn as nn


@runtime_checkable
class Arch(Hashable, Protocol):
    """An immutable architecture; ``str(arch)`` is its canonical string and parses back to it."""

    def __str__(self) -> str: ...


class SearchSpace(Protocol):
    """A search space: parse, sample, encode for learning, build real networks, exact costs, LUT keys.

    ``encode`` returns a float32 array of shape ``(n, *encoding_shape)``: a one-hot per slot, the form the
    diffusion model and the predictors consume; ``decode`` takes any real array of that shape (for
    example a denoised sample) and returns the nearest valid archs.
    """

    name: str
    encoding_shape: tuple[int, ...]
    datasets: tuple[str, ...]
    default_dataset: str

    def parse(self, text: str) -> Arch: ...
    def sample(self, n: int, seed: int) -> list[Arch]: ...
    def size(self) -> int | None: ...
    def enumerate(self) -> Iterator[Arch]: ...
    def encode(self, archs: Sequence[Arch]) -> np.ndarray: ...
    def decode(self, x: np.ndarray) -> list[Arch]: ...
    def is_valid(self, arch: Arch) -> bool: ...
    def canonical(self, arch: Arch) -> Arch: ...
    def build(self, arch: Arch, dataset: str | None = None) -> "nn.Module": ...
    def input_shape(self, arch: Arch, dataset: str | None = None, batch: int = 1) -> tuple[int, ...]: ...
    def params(self, arch: Arch, dataset: str | None = None) -> int: ...
    def macs(self, arch: Arch, dataset: str | None = None) -> int: ...
    def op_signatures(self, arch: Arch, dataset: str | None = None) -> list[str]: ...


def parse_lines(space: SearchSpace, lines: Iterable[str], source: str = "input") -> list[Arch]:
    """Parse one arch per non-empty line; a bad line raises naming its line number."""
    from ..errors import ArchParseError

    archs = []
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            archs.append(space.parse(text))
        except ArchParseError as e:
            raise ArchParseError(f"{source}, line {number}: {e}") from None
    return archs
