"""The training command's user-facing error."""

from edgedeploy.core.errors import EdgeDeployError


class TrainError(EdgeDeployError):
    """A training recipe, source set, backbone initialisation or resume state the run cannot use."""
