"""A small numerical job: solve a linear system and report how well the solution fits.

numpy scalars and arrays in the returned value are converted to JSON by the runner.
"""

import numpy as np


def main():
    rng = np.random.default_rng(7)
    a = rng.normal(size=(200, 200)) + 200 * np.eye(200)
    x_true = rng.normal(size=200)
    b = a @ x_true
    x = np.linalg.solve(a, b)
    return {
        "residual_norm": np.linalg.norm(a @ x - b),
        "max_error": np.abs(x - x_true).max(),
        "condition_number": np.linalg.cond(a),
        "first_values": x[:3],
    }
