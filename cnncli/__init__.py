"""cnncli: convolutional image classifiers on a CPU, from the command line.

Importing the package is cheap: numba and the kernels load only when a model is built.
"""

__version__ = "0.1.0"

from . import config as _config  # noqa: E402,F401  (environment before numpy, scipy and numba load)
