"""`plan`'s constants are the model graph's: each family's FLOPs and parameters, counted again
on the meta device (shapes only, seconds) through the code adapt and synthesize run, match
each family record's `costs` within the stated tolerance."""

from __future__ import annotations

import pytest

from datadream.components.generators.families import FAMILIES

# The count is exact for one set of library versions; another torch/diffusers may route an op
# (attention, a norm) differently. Beyond this, rerun `python benchmarks/cost_constants.py --families`.
TOLERANCE = 0.02


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_costs_match_a_count_of_the_model_graph(family):
    from datadream.components.testmodels.families import count_family_flops

    counted = count_family_flops(family)
    assert counted.keys() == FAMILIES[family].costs.keys()
    for name, value in counted.items():
        assert value == pytest.approx(FAMILIES[family].costs[name], rel=TOLERANCE), name
    # A training step costs a forward and a backward through the activations (about twice a forward).
    assert 1.8 < counted["denoiser_lora_train_flops"] / counted["denoiser_fwd_flops"] < 2.6


def test_costs_scale_from_each_familys_native_size():
    from datadream import costs

    assert costs.pixels("flux", 512) == 0.25 and costs.pixels("sd", 512) == 1.0
    assert costs.family_value("", "denoiser_fwd_flops") == costs.family_value("sd", "denoiser_fwd_flops")
