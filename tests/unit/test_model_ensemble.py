"""A deep ensemble (``ModelConfig.members``): members side by side, each trained on its
own loss, scored by their mean logit; and ``BestMembers``, which keeps each member at its
own best validation epoch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kubeloop.data.fraud import FRAUD_SCHEMA
from kubeloop.model import ModelBundle, ModelConfig, Preprocessor, TabularClassifier
from kubeloop.training.loop import BestMembers, member_losses, run_epoch
from tests.support.training import split_frames


def _ensemble(members: int = 3, n_inputs: int = 4) -> TabularClassifier:
    torch.manual_seed(0)
    return TabularClassifier(ModelConfig(n_inputs=n_inputs, hidden_units=8, members=members))


def test_members_score_their_mean_logit_and_train_on_their_own_losses():
    network = _ensemble()
    x = torch.randn(5, 4)
    network.train()
    assert network(x).shape == (3, 5)  # every member's logits, for its own loss
    network.eval()
    members = network.member_logits(x)
    assert members.shape == (3, 5)
    assert torch.allclose(network(x), members.mean(0))
    # Members start apart (their own initial weights) ...
    assert not torch.allclose(members[0], members[1])
    # ... and one member's loss moves only that member's weights.
    network.train()
    network(x)[1].sum().backward()
    for parameter in network.parameters():
        assert parameter.grad[[0, 2]].abs().sum() == 0
        assert parameter.grad[1].abs().sum() > 0


def test_a_single_network_keeps_its_shape_and_state_names():
    network = TabularClassifier(ModelConfig(n_inputs=4, hidden_units=8))
    x = torch.randn(5, 4)
    assert network(x).shape == (5,) and network.member_logits(x).shape == (1, 5)
    # The names a stored single-network model.pt holds.
    assert set(network.state_dict()) == {
        f"net.{i}.{p}" for i in (0, 3, 5) for p in ("weight", "bias")
    }
    with pytest.raises(ValueError, match="members must be at least 1"):
        TabularClassifier(ModelConfig(n_inputs=4, members=0))


def test_an_ensemble_bundle_saves_and_loads(tmp_path):
    frame, _ = split_frames(days=2, n_accounts=100)
    pre = Preprocessor.fit(frame, FRAUD_SCHEMA)
    config = ModelConfig(n_inputs=pre.n_outputs, hidden_units=8, members=4, threshold=0.3)
    torch.manual_seed(1)
    network = TabularClassifier(config).eval()
    bundle = ModelBundle(schema=FRAUD_SCHEMA, preprocessor=pre, config=config, network=network)
    loaded = ModelBundle.load(bundle.save(tmp_path / "model"))
    assert loaded.config.members == 4
    np.testing.assert_allclose(loaded.predict_proba(frame), bundle.predict_proba(frame))


def test_run_epoch_trains_every_member():
    network = _ensemble()
    x, y = torch.randn(64, 4), (torch.rand(64) > 0.5).float()
    before = [p.detach().clone() for p in network.parameters()]
    loss_fn = torch.nn.BCEWithLogitsLoss()
    loss = run_epoch(network, torch.optim.Adam(network.parameters(), 1e-2), loss_fn, x, y, 16,
                     torch.Generator().manual_seed(0))  # fmt: skip
    assert np.isfinite(loss)
    for old, new in zip(before, network.parameters(), strict=True):
        assert all((old[m] != new[m]).any() for m in range(3))
    losses = member_losses(network, loss_fn, x, y)
    assert losses.shape == (3,) and np.isfinite(losses).all()


def test_best_members_keeps_each_member_at_its_own_best_epoch():
    def state(epoch: int) -> dict[str, np.ndarray]:
        return {"w": np.full((3, 2), float(epoch)), "b": np.full((3, 1, 1), float(epoch))}

    best = BestMembers(3)
    best.offer(1, np.array([0.5, 0.5, np.nan]), lambda: state(1), last=False)
    best.offer(2, np.array([0.4, 0.6, np.nan]), lambda: state(2), last=False)  # member 0 improves
    best.offer(3, np.array([0.45, 0.3, np.nan]), lambda: state(3), last=True)  # member 1 improves
    assert best.epochs.tolist() == [2, 3, 3]  # member 2 never finite: its last epoch
    assert best.state["w"][:, 0].tolist() == [2.0, 3.0, 3.0]
    assert best.state["b"].ravel().tolist() == [2.0, 3.0, 3.0]
    np.testing.assert_allclose(best.losses[:2], [0.4, 0.3])


def test_best_members_of_one_network_takes_the_whole_state():
    best = BestMembers(1)
    copied = []

    def state(value: float) -> dict[str, np.ndarray]:
        copied.append(value)
        return {"net.0.weight": np.full((2, 2), value)}

    best.offer(1, np.array([0.5]), lambda: state(1.0), last=False)
    best.offer(2, np.array([0.7]), lambda: state(2.0), last=False)
    best.offer(3, np.array([0.2]), lambda: state(3.0), last=True)
    assert best.epochs.tolist() == [3] and best.state["net.0.weight"][0, 0] == 3.0
    assert copied == [1.0, 3.0]  # no copy for an epoch that improved no member
