"""The exceptions fashion-ray raises on purpose share one base, so an entrypoint can tell the
user's mistake (bad flags, URIs, bundles, configurations, files: exit 2 with one line) from a
run that could not finish or prove its output (exit 1) without naming every class."""


class FashionRayError(Exception):
    """Anything the project raises on purpose; its message is written for the user."""


class InputError(FashionRayError, ValueError):
    """What the user gave cannot work: flags, URIs, bundles, configurations, files."""


class RunError(FashionRayError, RuntimeError):
    """A run that could not finish, or could not prove what it wrote."""
