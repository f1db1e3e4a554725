"""``shares``: loss curves vs plain, SGD on the shares, per-role transcripts, adversaries per role, read-out."""

from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from scipy import stats

import blindtrain as bt
from blindtrain.cli import main
from blindtrain.errors import IntegrityError, UsageError
from blindtrain.field import codec
from blindtrain.models import build
from blindtrain.transcript import load as load_transcript
from tests.protocols.conftest import max_relative

P = codec.DEFAULT_MODULUS


def _curve(protocol, model_name, dataset, *, steps=20, batch=32, lr=0.05, momentum=0.0, optimizer="sgd",
           transcript=False, adversary=None, model_kwargs=None, **options):
    torch.manual_seed(0)
    model = build(model_name, dataset.input_shape, dataset.num_classes, **(model_kwargs or {}))
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    session = bt.Session(protocol=protocol, enclave_key=bytes(32), seed=None, device="cpu", transcript=transcript,
                         adversary=adversary, **options)
    model, opt = session.prepare(model, opt)
    model.train()
    losses = []
    for index, (x, y) in enumerate(dataset.batches(batch_size=batch, epoch=0, seed=0)):
        if index == steps:
            break
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, session, model


@pytest.mark.parametrize("steps", [pytest.param(20, marks=pytest.mark.slow), 5])
def test_mlp_digits_sgd_on_the_shares_matches_plain_at_every_step(digits, steps):
    plain, s1, plain_model = _curve("plain", "mlp", digits, steps=steps)
    shares, s2, model = _curve("shares", "mlp", digits, steps=steps)
    summary = s2.metrics()["protocol_summary"]
    assert max_relative(shares, plain) < 1e-3
    assert shares != plain  # it really went through the field (stochastic rounding of gradients)
    assert summary["updates_on_shares"] == steps * 3 and summary["weight_sharings"] == 3  # shared once, never again
    assert set(summary["weight_update"].values()) == {"SGD on the shares (exact, lr folded into the gradient's fixed point)"}
    # state_dict reconstructs the plaintext weights inside the enclave (checked against the projections)
    mine, ref = model.state_dict(), plain_model.state_dict()
    for key in ref:
        torch.testing.assert_close(mine[key], ref[key], rtol=1e-3, atol=1e-4)
    assert s2.metrics()["integrity_failures"] == 0
    s1.close()
    s2.close()


@pytest.mark.slow
def test_lenet_synthetic_matches_plain_at_every_step(synthetic):
    plain, s1, _ = _curve("plain", "lenet", synthetic, batch=16, lr=0.02)
    shares, s2, _ = _curve("shares", "lenet", synthetic, batch=16, lr=0.02)
    assert max_relative(shares, plain) < 1e-3
    s1.close()
    s2.close()


def test_lenet_synthetic_few_steps_match_plain(synthetic):
    plain, s1, _ = _curve("plain", "lenet", synthetic, steps=3, batch=8, lr=0.02)
    shares, s2, _ = _curve("shares", "lenet", synthetic, steps=3, batch=8, lr=0.02)
    assert max_relative(shares, plain) < 1e-3
    assert s2.metrics()["protocol_summary"]["updates_on_shares"] == 3 * 5
    s1.close()
    s2.close()


def test_momentum_runs_in_the_enclave_and_reshares(digits):
    plain, s1, _ = _curve("plain", "mlp", digits, steps=5, momentum=0.9)
    shares, s2, _ = _curve("shares", "mlp", digits, steps=5, momentum=0.9)
    summary = s2.metrics()["protocol_summary"]
    assert max_relative(shares, plain) < 1e-3
    assert summary["updates_on_shares"] == 0 and summary["weight_sharings"] == 5 * 3  # re-shared every step
    s1.close()
    s2.close()


@pytest.mark.parametrize("steps,batch", [pytest.param(20, 8, marks=pytest.mark.slow), (2, 4)])
def test_attention_products_are_offloaded_and_match_plain(synthetic, steps, batch):
    kwargs = {"depth": 1, "dim": 32, "heads": 2}
    plain, s1, _ = _curve("plain", "vit-tiny", synthetic, steps=steps, batch=batch, lr=0.02, model_kwargs=kwargs)
    shares, s2, _ = _curve("shares", "vit-tiny", synthetic, steps=steps, batch=batch, lr=0.02, model_kwargs=kwargs)
    assert max_relative(shares, plain) < 1e-3
    s1.close()
    s2.close()


def _chi2_uniform(values: np.ndarray, modulus: int, bins: int = 16) -> float:
    counts = np.bincount((values.astype(np.float64) / modulus * bins).astype(np.int64).clip(0, bins - 1),
                         minlength=bins)
    return stats.chisquare(counts).pvalue


def test_every_role_receives_only_uniform_field_elements_and_seeds(digits, tmp_path):
    _, session, _ = _curve("shares", "mlp", digits, steps=3, transcript=True)
    written = session.save_transcripts(tmp_path / "run.npz")
    session.close()
    roles = {path.name.split(".")[1]: path for path in written if path.name.count(".") == 2}
    assert set(roles) == {"s0", "s1", "dealer"}
    for role, path in roles.items():
        meta, arrays = load_transcript(path)
        assert meta and {m["kind"] for m in meta} == {"share"}
        field = np.concatenate([np.zeros(0, np.int64)] + [arrays[m["key"]].reshape(-1) for m in meta
                                                          if arrays[m["key"]].dtype == np.int64])
        seeds = np.concatenate([arrays[m["key"]].reshape(-1) for m in meta if arrays[m["key"]].dtype == np.uint8])
        if role == "dealer":
            assert field.size == 0  # the dealer gets seeds only
        else:
            assert field.min() >= 0 and field.max() < P
            assert _chi2_uniform(field, P) > 1e-4, role
        assert _chi2_uniform(seeds, 256) > 1e-4, role
    # the pixels that are always zero in digits look uniform in S1's share of the input
    meta, arrays = load_transcript(roles["s1"])
    x_share = [arrays[m["key"]] for m in meta if m["layer"] == "1" and m["op"] == "forward" and m["operand"] == "A"]
    images = torch.cat([x for x, _ in digits.batches(batch_size=256, epoch=0, seed=0)]).reshape(-1, 64)
    zero_pixels = np.flatnonzero((images == images[0]).all(0).numpy())
    assert zero_pixels.size > 0
    column_values = np.concatenate([share[:, zero_pixels].reshape(-1) for share in x_share])
    assert _chi2_uniform(column_values, P) > 1e-4


@pytest.mark.parametrize("role", ["s0", "s1", "dealer"])
@pytest.mark.parametrize("behaviour", ["tamper", "noise", "zeros", "replay"])
def test_adversaries_on_every_role_are_caught_with_exit_3(behaviour, role):
    result = CliRunner().invoke(main, ["train", "--protocol", "shares", "--steps", "3", "--quiet", "--device", "cpu",
                                       "--momentum", "0", "--adversary", f"{behaviour}:role={role}"])
    assert result.exit_code == 3, result.output
    assert "integrity violation" in result.output


@pytest.mark.parametrize("adversary", ["tamper:role=s0,target=state,step=2", "zeros:role=s1,target=state,step=2",
                                       "tamper:role=s1,op=grad_weight,step=1"])
def test_tampered_weight_share_or_update_is_caught_within_one_step(adversary, digits):
    with pytest.raises(IntegrityError) as caught:
        _curve("shares", "mlp", digits, steps=4, adversary=adversary)
    message = str(caught.value)
    assert "step 2" in message  # the share was altered at (or the update applied after) step 1 -> 2


def test_weight_share_altered_after_the_last_step_is_caught_when_read_out(digits):
    _, session, model = _curve("shares", "mlp", digits, steps=2)
    for role in ("s0", "s1"):  # an honest read-out first
        assert session.boundary.transport(role).worker.state["shares/3/w"].dtype == torch.int64
    model.state_dict()
    worker = session.boundary.transport("s1").worker
    worker.state["shares/3/w"].view(-1)[5] += 1
    with pytest.raises(IntegrityError, match="does not match its tracked projections"):
        model.state_dict()
    session.close()


def test_links_are_counted_per_role_and_relayed_through_the_boundary(digits):
    _, session, _ = _curve("shares", "mlp", digits, steps=2)
    metrics = session.metrics()
    links = metrics["protocol_summary"]["links"]
    session.close()
    for link in ("enclave->s0", "enclave->s1", "enclave->dealer", "s0->s1", "s1->s0", "dealer->s1"):
        assert links["bytes"][link] > 0, link
    assert "dealer->s0" not in links["bytes"]  # S0's triple shares are seeds
    assert links["bytes"]["enclave->s0"] < links["bytes"]["enclave->s1"] / 50  # S0 gets seeds, S1 tensors
    relayed = links["bytes"]["s0->s1"] + links["bytes"]["s1->s0"] + links["bytes"]["dealer->s1"]
    assert links["relayed_through_enclave_bytes"] == relayed
    # everything crossed the one choke point: the ledger's per-worker bytes hold the links' bytes
    to_workers = sum(row["bytes_to"] for row in metrics["per_worker"].values())
    logical_to = sum(v for k, v in links["bytes"].items() if k.startswith("enclave->")) + relayed
    assert to_workers == logical_to


@pytest.mark.parametrize("model_name,momentum", [("mlp", 0.0), ("mlp", 0.9), ("lenet", 0.0)])
def test_cost_model_bytes_equal_the_ledger_every_step(model_name, momentum, digits, synthetic):
    from blindtrain.costs import trace_ops
    from blindtrain.protocols.shares_cost import link_bytes, weight_numels

    dataset = digits if model_name == "mlp" else synthetic
    torch.manual_seed(0)
    model = build(model_name, dataset.input_shape, dataset.num_classes)
    ops = trace_ops(model, dataset.input_shape, batch=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=momentum)
    session = bt.Session(protocol="shares", device="cpu", seed=None, enclave_key=bytes(32))
    model, opt = session.prepare(model, opt)
    cost = session.protocol.cost_model(ops, batch=4, input_numel=0, classes=10)
    protocol = session.protocol
    per_link = link_bytes(ops, resident={n: layer.resident for n, layer in protocol.layers.items()},
                          weight_numel=weight_numels(protocol.layers))
    ledger, links = session.ledger, protocol.channel.links
    for index, (x, y) in enumerate(dataset.batches(batch_size=4, epoch=0, seed=0)):
        if index == 3:
            break
        before = (ledger.bytes_to_worker, ledger.bytes_from_worker)
        links_before = dict(links.bytes)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if index > 0:  # step 0 also shares the weights (setup)
            assert (ledger.bytes_to_worker - before[0], ledger.bytes_from_worker - before[1]) == \
                (cost.bytes_to_worker, cost.bytes_from_worker)
            measured = {k: v - links_before.get(k, 0) for k, v in links.bytes.items() if v - links_before.get(k, 0)}
            assert measured == dict(per_link)
    session.close()


@pytest.mark.slow
def test_process_transport_runs_four_processes(digits):
    losses, session, _ = _curve("shares", "mlp", digits, steps=2, transport="process")
    pids = {role: session.boundary.transport(role).pid for role in ("s0", "s1", "dealer")}
    session.close()
    inproc, s2, _ = _curve("shares", "mlp", digits, steps=2)
    s2.close()
    assert len(set(pids.values())) == 3 and all(np.isfinite(losses))
    assert max_relative(losses, inproc) < 1e-3


@pytest.mark.parametrize("adversary", ["tamper:role=s0,layer=features.0", "noise:role=dealer,op=grad_input,layer=features.3",
                                       "tamper:role=s1,op=grad_weight,layer=features.3"])
def test_adversaries_on_conv_layers_are_caught(adversary, synthetic):
    with pytest.raises(IntegrityError, match="features"):
        _curve("shares", "lenet", synthetic, steps=3, batch=4, lr=0.02, adversary=adversary)


def test_tampered_attention_product_is_caught(synthetic):
    kwargs = {"depth": 1, "dim": 32, "heads": 2}
    with pytest.raises(IntegrityError, match="bmm"):
        _curve("shares", "vit-tiny", synthetic, steps=2, batch=4, lr=0.02, model_kwargs=kwargs,
               adversary="tamper:role=s0,op=forward,layer=blocks.0.attn.scores")


@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["resnet18", "resnet50"])
def test_resnets_run_a_training_step(model_name, synthetic):
    losses, session, _ = _curve("shares", model_name, synthetic, steps=1, batch=2, lr=0.01)
    metrics = session.metrics()
    session.close()
    assert np.isfinite(losses[0]) and metrics["integrity_failures"] == 0 and metrics["integrity_checks"] > 0


def test_check_soundness_is_one_bad_value_per_repetition():
    """A wrong element at (r, j) passes a repetition iff s_j is the one residue that cancels it (here 0): the
    stated bound (2^20 + 1)^-k per check is exact for such a tampering, and every other s catches it."""
    from blindtrain.field.engine import FieldEngine
    from blindtrain.protocols.shares_verify import check_weighted

    engine = FieldEngine(P)
    torch.manual_seed(3)
    x = torch.randint(-2**20, 2**20, (6, 16))
    w = torch.randint(-2**30, 2**30, (16, 5))
    y = torch.remainder(engine.bilinear("matmul", x, w), P)
    wrong = y.clone()
    wrong[2, 3] = (wrong[2, 3] + 12345) % P
    for value in range(-40, 41):
        s = torch.randint(-2**19, 2**19, (5, 1))
        s[3, 0] = value
        projection = torch.remainder(engine.bilinear("matmul", w, s), P)
        assert check_weighted("matmul", x, y, projection, s, engine, {})
        assert check_weighted("matmul", x, wrong, projection, s, engine, {}) == (value == 0)


def test_update_enclave_keeps_dot_grad_and_matches_plain(digits):
    plain, s1, plain_model = _curve("plain", "mlp", digits, steps=2)
    shares, s2, model = _curve("shares", "mlp", digits, steps=2, update="enclave")
    assert max_relative(shares, plain) < 1e-3
    assert all(p.grad is not None for p in model.parameters())
    assert s2.metrics()["protocol_summary"]["updates_on_shares"] == 0
    with pytest.raises(UsageError, match="update must be"):
        bt.Session(protocol="shares", device="cpu", update="worker")
    s1.close()
    s2.close()


def _two_layer():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


def test_sgd_on_the_shares_seals_dot_grad_at_the_point_of_use():
    """A share-held weight's gradient is not in the enclave: reading it raises, the step still applies."""
    model = _two_layer()
    session = bt.Session(protocol="shares", device="cpu", seed=0)
    model, opt = session.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    x, y = torch.randn(4, 8), torch.tensor([0, 1, 2, 0])
    F.cross_entropy(model(x), y).backward()
    before = session.plaintext_model()[0].weight.detach().clone()
    with pytest.raises(UsageError, match="clip_grad_norm_"):
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
    opt.step()
    assert not torch.equal(session.plaintext_model()[0].weight, before)  # updated on the shares
    session.close()


def test_an_adversary_role_the_protocol_lacks_is_a_usage_error():
    with pytest.raises(UsageError, match="s0, s1, dealer"):
        bt.Session(protocol="shares", device="cpu", adversary="tamper:role=s2")
    session = bt.Session(protocol="shares", device="cpu", adversary="tamper")  # role main: the first role
    assert session.adversary.role == "s0"
    session.close()
