"""User-facing errors: each says what went wrong and what to do next."""


class EdgeKDError(Exception):
    """Base of every error a user can fix; the CLI prints its message without a traceback."""


class ConfigError(EdgeKDError):
    """A pipeline, target or calibration file is malformed; the message names file:line: key."""


class UnknownNameError(ConfigError):
    """A registry was asked for a name it does not hold."""


class DataNotFoundError(EdgeKDError):
    """A data set was not found in any of the places edgekd looks."""


class WeightsError(EdgeKDError):
    """A weights file is missing, corrupt, unsafe or does not fit its architecture."""


class RunDirError(EdgeKDError):
    """A run directory belongs to another pipeline or is in a state edgekd will not overwrite."""


class ParityError(EdgeKDError):
    """An exported model disagrees with the PyTorch model beyond tolerance."""


class BackendMissingError(EdgeKDError):
    """An optional runtime (TensorRT, OpenVINO, CUDA) is not installed or not usable here."""
