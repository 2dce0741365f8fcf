"""The official baseline PID on the lataccel error (p 0.195, i 0.100, d -0.053)."""
import numpy as np

from . import BaseController

P, I, D = 0.195, 0.100, -0.053


class Controller(BaseController):
    def __init__(self):
        self.p, self.i, self.d = P, I, D
        self.error_integral = 0.0
        self.prev_error = 0.0

    def update(self, target_lataccel, current_lataccel, state, future_plan):
        error = target_lataccel - current_lataccel
        self.error_integral += error
        error_diff = error - self.prev_error
        self.prev_error = error
        return self.p * error + self.i * self.error_integral + self.d * error_diff


class BatchController:
    """The same PID for n segments at once (identical float64 arithmetic per row)."""

    def __init__(self, n: int):
        self.error_integral = np.zeros(n)
        self.prev_error = np.zeros(n)

    def update_batch(self, inputs):
        error = inputs.target - inputs.current
        self.error_integral = self.error_integral + error
        error_diff = error - self.prev_error
        self.prev_error = error
        return P * error + I * self.error_integral + D * error_diff
