"""What one job costs, and the per-job budget that keeps one job from holding the only worker for hours.

The cost is counted in pixel-steps: generated frames x height x width x denoising steps. The DiT's work per
step grows with the number of tokens (frames x pixels), so this is proportional to the render time of a
given model on a given machine, whatever the mix of sizes. The default budget is a multiple of the model
config's own default job (the operator's "normal" video), so it scales with the model being served.
"""

from __future__ import annotations

from dataclasses import dataclass

from .job_request import BadRequest
from .settings import DEFAULT_BUDGET_MULTIPLE


@dataclass(frozen=True)
class JobCost:
    frames: int
    height: int
    width: int
    steps: int

    @property
    def pixel_steps(self) -> int:
        return self.frames * self.height * self.width * self.steps

    def describe(self) -> str:
        return f"{self.frames} frames x {self.width}x{self.height} pixels x {self.steps} steps"


def job_cost(runtime_config, *, num_frames=None, height=None, width=None, steps=None) -> JobCost:
    """The cost of a job whose left-out settings take the config's values."""
    r = runtime_config
    return JobCost(frames=num_frames or r.num_frames, height=height or r.video_size_h,
                   width=width or r.video_size_w, steps=steps or r.num_steps)


def default_budget(runtime_config) -> int:
    return DEFAULT_BUDGET_MULTIPLE * job_cost(runtime_config).pixel_steps


def budget_for(settings, runtime_config) -> int:
    return settings.max_job_cost if settings.max_job_cost is not None else default_budget(runtime_config)


def over_budget_message(cost: JobCost, budget: int, runtime_config, settings) -> str:
    if settings.max_job_cost is not None:
        basis = "set by the operator (--max_job_cost)"
    else:
        basis = (f"{DEFAULT_BUDGET_MULTIPLE} x the model's default job of "
                 f"{job_cost(runtime_config).describe()}")
    return (f"this job would cost {cost.pixel_steps:,} pixel-steps ({cost.describe()}), over this server's "
            f"budget of {budget:,} per job ({basis}); ask for fewer frames, a smaller size or fewer steps")


def check_cost(job_request, runtime_config, settings) -> JobCost:
    """The job's cost; BadRequest with the numbers when it is over the budget."""
    cost = job_cost(runtime_config, num_frames=job_request.num_frames, height=job_request.height,
                    width=job_request.width, steps=job_request.steps)
    budget = budget_for(settings, runtime_config)
    if cost.pixel_steps > budget:
        raise BadRequest(over_budget_message(cost, budget, runtime_config, settings))
    return cost


def cost_view(cost: JobCost | None, budget: int | None) -> dict | None:
    """What a job reports about its cost."""
    if cost is None:
        return None
    return {"pixel_steps": cost.pixel_steps, "frames": cost.frames, "height": cost.height, "width": cost.width,
            "steps": cost.steps, "budget_pixel_steps": budget,
            "fraction_of_budget": round(cost.pixel_steps / budget, 4) if budget else None}
