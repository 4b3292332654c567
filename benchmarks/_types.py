"""Array aliases shared by the benchmark modules."""

import numpy as np
import numpy.typing as npt

__all__ = ["FloatArray", "IntArray"]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
