import pytest
import torch

from magi1.sampling.schedule import (
    base_grid,
    distill_step_size,
    noisy_latent,
    step_intervals,
    time_grid,
    velocity_target,
)

# Reference 16-step values (rounded to 5 decimals where the reference gives them that way).
T16 = [0, .00131, .00526, .0120, .02174, .03482, .05172, .07313, .1000, .13366, .17606, .23004, .3000,
       .39302, .52128, .70755, 1.0]


def test_sixteen_step_grid_values():
    t = time_grid(16)
    assert t.dtype == torch.float32 and t.shape == (17,)
    assert torch.allclose(t, torch.tensor(T16), atol=6e-5)
    assert bool((t[1:] > t[:-1]).all())


def test_grid_is_s_squared_shifted():
    s = torch.linspace(0, 1, 33, dtype=torch.float64)
    expected = s**2 / (3 - 2 * s**2)
    assert torch.allclose(time_grid(32).double(), expected, atol=1e-6)


def test_sixty_four_step_landmarks():
    t = time_grid(64)
    assert t[0] == 0
    assert abs(float(t[32]) - 0.1) < 1e-7
    assert abs(float(t[48]) - 0.3) < 1e-7
    # float32(0.3) > 0.3: the nearly-clean test counts the step landing on 0.3.
    assert float(t[48]) > 0.3
    # The official float32 expression ends a hair above 1.
    assert float(t[-1]) == pytest.approx(1.0, abs=2e-7)


def test_shortcut_grids():
    assert base_grid(12).tolist() == [0, .125, .1875, .25, .375, .4375, .5, .625, .6875, .75, .875, .9375, 1.0]
    assert base_grid(12, "16,16,8").tolist() == [0, .0625, .125, .25, .3125, .375, .5, .5625, .625, .75,
                                                 .8125, .875, 1.0]
    s = base_grid(12)
    assert torch.equal(time_grid(12), (1 / 3) * s**2 / (1 + (1 / 3 - 1) * s**2))
    with pytest.raises(ValueError):
        base_grid(12, "8,8,8")


def test_intervals_and_distill_step_size():
    assert step_intervals(12) == (2, 1, 1) * 4
    assert step_intervals(12, "16,16,8") == (1, 1, 2) * 4
    assert step_intervals(16) == (1,) * 16
    assert [distill_step_size(12, i) for i in (1, 2)] == [8.0, 4.0]
    assert distill_step_size(16) == 8.0 and distill_step_size(64) == 32.0 and distill_step_size(32, 2) == 16.0


def test_time_convention():
    noise, data = torch.randn(5), torch.randn(5)
    assert torch.equal(noisy_latent(noise, data, 0.0), noise)
    assert torch.equal(noisy_latent(noise, data, 1.0), data)
    x = noisy_latent(noise, data, 0.25)
    assert torch.allclose(x + 0.75 * velocity_target(noise, data), data, atol=1e-6)
