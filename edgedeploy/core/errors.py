"""User-facing errors and the exit codes every command uses.

Anything raised as an ``EdgeDeployError`` is reported by the CLI on one line, without a traceback,
with its ``exit_code``. Messages say what is wrong and what to do about it.

====  ==========================================================================================
code  meaning
====  ==========================================================================================
0     done
1     a check failed: audit errors, the fidelity gate, export verification over tolerance
2     bad input or usage (click's own convention too): a wrong option, path, file or environment
3     a tool or runtime failed: a TensorRT build, an AI Hub job, a device or ONNX Runtime run
4     an internal error: a bug; ``edgedeploy --debug ...`` shows the traceback
====  ==========================================================================================
"""

CHECK_FAILED = 1
BAD_INPUT = 2
TOOL_FAILED = 3
INTERNAL_ERROR = 4


class EdgeDeployError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""

    exit_code = BAD_INPUT


class ToolFailedError(EdgeDeployError):
    """A tool or runtime the command drove failed (TensorRT build, AI Hub job, a device or ONNX Runtime run)."""

    exit_code = TOOL_FAILED


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

    exit_code = CHECK_FAILED


class EngineBuildError(ToolFailedError):
    """TensorRT could not parse the graph or build the engine."""


class ToolUnavailableError(EdgeDeployError):
    """An optional tool (TensorRT, a GPU, the AI Hub client or its token) is not available here."""


class TrainError(EdgeDeployError):
    """A training recipe, source set, backbone initialisation or resume state the run cannot use."""
