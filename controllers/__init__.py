"""Controllers with the official challenge interface.

A controller module defines `Controller` (one instance per segment) with
`update(target_lataccel, current_lataccel, state, future_plan) -> steer`, where the
targets and lataccels are floats in m/s^2, `state` is a State(roll_lataccel, v_ego,
a_ego) and `future_plan` a FuturePlan(lataccel, roll_lataccel, v_ego, a_ego) of lists
(rows step+1 .. step+49). The harness calls it on every step from step 20 on; before
step 100 its output is replaced by the logged steer.

A module may also define `BatchController(n)` with `update_batch(inputs) -> float64 [n]`
taking `tinyphysics.ControlInputs` for n segments at once; it must return the same
actions as n `Controller` instances would.
"""


class BaseController:
    def update(self, target_lataccel, current_lataccel, state, future_plan):
        raise NotImplementedError
