import torch

from almond_cli.langevin.chains import ESCAPE_BOUND, PersistentChains


def test_gather_scatter_round_trip_by_data_index():
    positions = torch.arange(5 * 3 * 2, dtype=torch.float32).view(5, 3, 2)
    chains = PersistentChains(positions.clone())
    indices = torch.tensor([4, 0, 2])
    batch = chains.gather(indices)
    assert torch.equal(batch, positions[[4, 0, 2]])
    chains.scatter(indices, batch + 100)
    assert torch.equal(chains.positions[[4, 0, 2]], positions[[4, 0, 2]] + 100)
    assert torch.equal(chains.positions[[1, 3]], positions[[1, 3]])  # untouched points keep their chains


def test_gather_returns_a_copy():
    chains = PersistentChains(torch.zeros(3, 2, 1))
    batch = chains.gather(torch.tensor([1]))
    batch += 1
    assert float(chains.positions.abs().sum()) == 0.0


def test_state_dict_round_trip():
    chains = PersistentChains(torch.randn(4, 2, 3))
    again = PersistentChains.from_state_dict(chains.state_dict())
    assert torch.equal(again.positions, chains.positions) and again.num_chains == 2


def test_healthy_chains_are_finite_and_within_the_escape_bound():
    assert PersistentChains(torch.randn(4, 2, 3)).healthy()
    assert PersistentChains(torch.full((2, 1, 1), ESCAPE_BOUND)).healthy()  # the bound itself still counts
    for bad in (float("nan"), float("inf"), -float("inf"), -2 * ESCAPE_BOUND):
        positions = torch.randn(4, 2, 3)
        positions[3, 1, 2] = bad
        assert not PersistentChains(positions).healthy(), bad
