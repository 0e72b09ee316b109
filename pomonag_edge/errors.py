"""The one base type for user mistakes.

A ``UserError`` is printed by the CLI as one line on stderr and exits with status 2, no traceback.
Anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Something the user can fix: bad input, missing file, missing optional dependency."""

    exit_code = 2


class ArchParseError(UserError, ValueError):
    """An architecture string that does not parse; the message names the offending part."""


class ProfileError(UserError):
    """A profile file that is missing, corrupt, foreign or of a newer schema."""


class BudgetError(UserError):
    """A budget that cannot be parsed or that no net can meet."""


class MissingDependencyError(UserError, ImportError):
    """An optional dependency (TensorRT, pymoo, ...) that this command needs is not installed."""


class ExtrapolationWarning(UserWarning):
    """A predictor asked about inputs outside the range it was fitted on; its answer is a rough extrapolation."""
