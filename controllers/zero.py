"""Always steers 0: the do-nothing baseline."""
import numpy as np

from . import BaseController


class Controller(BaseController):
    def update(self, target_lataccel, current_lataccel, state, future_plan):
        return 0.0


class BatchController:
    def __init__(self, n: int):
        self.n = n

    def update_batch(self, inputs):
        return np.zeros(self.n)
