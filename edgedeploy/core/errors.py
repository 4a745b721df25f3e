"""User-facing errors.

Anything raised as an ``EdgeDeployError`` is a mistake the user can fix: the CLI prints its
message on one line and exits non-zero without a traceback. Messages say what is wrong and what
to do about it.
"""


class EdgeDeployError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""

    exit_code = 2


class ProfileError(EdgeDeployError):
    """A device profile is missing, malformed or unknown."""


class RecipeError(EdgeDeployError):
    """A recipe is missing, malformed or unknown."""


class CheckpointError(EdgeDeployError):
    """A checkpoint cannot be read or does not fit the recipe's architecture."""


class DataError(EdgeDeployError):
    """A benchmark root, category, image or mask is missing or unreadable."""


class OnnxModelError(EdgeDeployError):
    """An ONNX file does not parse or is not a model."""


class BuildError(EdgeDeployError):
    """A build stage failed verification (e.g. outputs drifted past tolerance)."""


class ToolUnavailableError(EdgeDeployError):
    """An optional tool (TensorRT, a GPU, the AI Hub client or its token) is not available here."""


class TrainError(EdgeDeployError):
    """A training recipe, source set, backbone initialisation or resume state the run cannot use."""
