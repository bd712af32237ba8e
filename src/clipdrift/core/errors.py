"""The error users see: a mistake they can fix, reported without a traceback."""


class UserFacingError(Exception):
    """Raised for bad input or missing resources; its message names the problem and the fix.

    The workflow's scripts print these messages as they are (no traceback) and fail the job.
    """


class StudyConfigError(UserFacingError, ValueError):
    """The study config is valid JSON-schema-wise but inconsistent."""
