"""Replicas: an LLM that no single unit serves at its rate runs in several units (services/placer/replicas.py).

Numbers (conftest.hand_table, device 1000 bytes, weights 400): an LLM alone on one device has
1 + (1000 - 400 - 110) // 110 = 5 sequences of KV, and a batch b at 100% share serves b / 1.0 s req/s:
a unit serves at most 5 req/s of one LLM.
"""

import pytest

from muxserve import workload
from muxserve.config import ConfigError
from services.placer.config import PlacerConfig
from services.placer.costmodel import CostTable
from services.placer.replicas import best_alone
from services.placer.search import Planner
from services.placer.simulator import SimConfig, SimLLM, Simulation
from tests.placer.conftest import estimator, hand_table, spec


def planner(llms, devices: int, max_replicas: int) -> Planner:
    return Planner(llms, {}, 1, devices, estimator(), None, max_replicas)


def test_one_unit_serves_at_most_five_req_s_of_an_llm():
    p = planner([spec("hot", 12)], 4, 1)
    assert best_alone(p, "hot") == pytest.approx(5.0, rel=1e-4)
    assert p.plan("muxserve").objective == pytest.approx(5.0, rel=1e-4)


@pytest.mark.parametrize("policy", ["muxserve", "spatial", "temporal"])
def test_a_hot_llm_runs_in_as_many_units_as_its_rate_needs(policy):
    placement = planner([spec("hot", 12), spec("cold", 1)], 4, 4).plan(policy)
    hot = placement.units_of("hot")
    assert len(hot) == 3  # ceil(12 / 5)
    assert len({u.unit_id for u in hot}) == 3 and all(u.llm_names.count("hot") <= 1 for u in placement.units)
    assert all(m.rate == pytest.approx(4.0, rel=1e-4) for u in hot for m in u.llms if m.name == "hot")
    assert len(placement.units_of("cold")) == 1
    assert placement.objective == pytest.approx(13.0, rel=1e-4)  # 3 x 4 + 1: everything served


def test_replicas_are_bounded_by_the_setting_and_the_devices():
    assert len(planner([spec("hot", 12)], 4, 2).plan("muxserve").units_of("hot")) == 2
    assert len(planner([spec("hot", 50)], 2, 8).plan("muxserve").units_of("hot")) == 2
    assert planner([spec("hot", 50)], 2, 8).plan("muxserve").objective == pytest.approx(10.0, rel=1e-4)


def test_an_llm_one_unit_serves_is_not_replicated():
    placement = planner([spec("a", 4), spec("b", 3)], 4, 4).plan("muxserve")
    assert len(placement.units_of("a")) == len(placement.units_of("b")) == 1


def test_the_simulator_spreads_a_replicated_llms_requests_over_its_units():
    placement = planner([spec("hot", 12)], 4, 4).plan("muxserve")
    llms = {"hot": SimLLM("hot", "m", weight_bytes=400, kv_bytes_per_token=1, rate=12)}
    reqs = workload.generate_rates({"hot": 12.0}, 20.0, 0, 10, 100)
    cfg = SimConfig(device_bytes=1000, memory_utilization=1.0, block_size=1, sim_block_bytes=1)
    cost = CostTable(hand_table())
    sim = Simulation(placement, llms, cost, cfg)
    recs = sim.run(reqs)
    assert all(r["completed"] for r in recs)
    served = [u.num_finished for u in sim.units]
    assert len(served) == 3 and min(served) > 0.2 * len(reqs)


def test_max_replicas_below_one_is_a_config_error():
    assert PlacerConfig.from_section({"max_replicas": 3}).max_replicas == 3
    with pytest.raises(ConfigError, match="max_replicas"):
        PlacerConfig.from_section({"max_replicas": 0})
