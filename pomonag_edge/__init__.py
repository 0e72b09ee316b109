"""pomonag-edge: Pareto-optimal many-objective neural architecture generation for a measured edge device."""

__version__ = "0.1.0"
