"""cnncli: convolutional image classifiers on a CPU, from the command line.

Importing the package is cheap: numba loads only when something trains or runs a batch of more than a few
images (small inference batches use plain numpy kernels; see cnncli.engine.layers).
"""

__version__ = "0.1.0"

from cnncli import config as _config  # noqa: E402,F401  (environment before numpy and numba load)
