"""What the training loop must know about its steps without waiting for the device every step.

Every step, ``watch`` records on the device whether the loss was finite (and the
first step where it was not); the host only reads device values in ``check``,
which the loop calls at log steps, before every checkpoint and at the end. So a
NaN is always found before the next checkpoint could save its weights, while
the step itself never stalls on a device-to-host copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clipsan.engine.runtime import Runtime


@dataclass
class HealthReport:
    loss: float  # the loss of the step just taken
    terms: dict[str, float]  # its named terms
    bad_step: int | None  # the first step (counted from 1) whose loss was not finite
    bad_value: float | None
    corrupt: int  # corrupt images dropped since the last check, over all processes
    stopping: bool  # a process received SIGINT/SIGTERM


class StepHealth:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.corrupt = 0  # this process's corrupt images since the last check (a host count)
        self._bad_step: torch.Tensor | None = None  # 0 while every loss was finite
        self._bad_value: torch.Tensor | None = None

    def watch(self, loss: torch.Tensor, step: int) -> None:
        """Note (on the device, no host read) whether the loss of 0-based ``step`` is finite."""
        value = loss.detach().float()
        if self._bad_step is None:
            self._bad_step = torch.zeros((), device=value.device)
            self._bad_value = torch.zeros((), device=value.device)
        first_bad = ~torch.isfinite(value) & (self._bad_step == 0)
        self._bad_step = torch.where(first_bad, float(step + 1), self._bad_step)
        self._bad_value = torch.where(first_bad, value, self._bad_value)

    def check(self, loss: torch.Tensor, terms: dict[str, torch.Tensor], stopping: bool) -> HealthReport:
        """One device read (and, under torchrun, one host collective) for everything the loop reports."""
        packed = torch.stack([self._bad_step, self._bad_value, loss.detach().float(), *(t.detach().float() for t in terms.values())])
        bad_step, bad_value, loss_value, *term_values = packed.cpu().tolist()
        corrupt, stops = self.corrupt, int(stopping)
        if self.rt.distributed:  # host values over the host group: no device involved
            corrupt, stops = (int(v) for v in self.rt.sum_host([corrupt, stops]))
        self.corrupt = 0
        return HealthReport(
            loss=loss_value,
            terms=dict(zip(terms, term_values)),
            bad_step=int(bad_step) if bad_step else None,
            bad_value=bad_value if bad_step else None,
            corrupt=corrupt,
            stopping=stops > 0,
        )
