"""Training: the paper's loss, and a narrow network that learns on two small phantoms."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from latup_edge.data.cases import discover_cases
from latup_edge.models import LATUPNet, LATUPNetConfig
from latup_edge.models.checkpoint import load_model
from latup_edge.train.loop import TrainingSettings, split_cases, train
from latup_edge.train.loss import cross_entropy, l2_penalty, soft_dice_losses, weighted_dice_loss
from latup_edge.train.sampling import TrainingCase, choose_case, load_training_case, sample_patch


def test_soft_dice_by_hand():
    # Class 1 predicted with p = 0.5 on its 2 voxels and 0 elsewhere: 1 - (2*1 + e) / (2 + 0.5 + e).
    target = torch.tensor([[0, 0, 1, 1]])
    probabilities = torch.tensor([[[1.0, 1.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.5]]])
    losses = soft_dice_losses(probabilities, target)
    assert losses[1].item() == pytest.approx(1 - 2 / 2.5, abs=1e-5)


def test_weighted_dice_loss_is_zero_for_a_perfect_prediction_and_max_for_the_worst():
    target = torch.tensor([[[[0, 1], [2, 3]]]])  # (N, D, H, W)
    perfect = torch.nn.functional.one_hot(target, 4).movedim(-1, 1).float() * 100
    assert weighted_dice_loss(perfect, target).item() == pytest.approx(0, abs=1e-4)
    wrong = torch.nn.functional.one_hot(torch.zeros_like(target), 4).movedim(-1, 1).float() * 100
    # Every region fully missed: 1.64 * 3 + 2.55 * 2 + 3.40 = 13.42.
    assert weighted_dice_loss(wrong, target).item() == pytest.approx(13.42, abs=1e-3)


def test_l2_penalty_covers_the_papers_kernels_only():
    net = LATUPNet(LATUPNetConfig(base_filters=4))
    weights = net.penalised_weights()
    assert len(weights) == 4 + 6 + 1  # encoder 2/3 convs, decoder convs 2-3 of each level, head
    penalised = {id(w) for w in weights}
    assert id(net.parallel.embed[0].weight) not in penalised
    assert id(net.decoder1.up_conv.conv.weight) not in penalised
    expected = 0.02 * sum(float((w.detach() ** 2).sum()) for w in weights)
    assert l2_penalty(weights).item() == pytest.approx(expected, rel=1e-5)


def _false_et_gradient(loss_of) -> float:
    # A non-enhancing core (NCR everywhere in the patch) that the network calls ET on half its voxels.
    target = torch.ones((1, 4, 4, 4), dtype=torch.long)
    logits = torch.zeros((1, 4, 4, 4, 4))
    logits[:, 1, :2] = 3.0
    logits[:, 3, 2:] = 3.0
    logits.requires_grad_(True)
    loss_of(logits, target).backward()
    return float(logits.grad[:, 3, 2:].mean())  # > 0: descending lowers the false ET logits


def test_cross_entropy_punishes_false_et_where_the_et_dice_term_cannot():
    def et_dice_only(logits, target):
        return soft_dice_losses(torch.softmax(logits, dim=1), target)[3]

    # No ET voxel in the batch: the ET Dice term sits at 1 whatever is predicted, no gradient.
    assert abs(_false_et_gradient(et_dice_only)) < 1e-6
    assert _false_et_gradient(cross_entropy) > 1e-3
    assert cross_entropy(torch.zeros((1, 4, 2, 2, 2)), torch.zeros((1, 2, 2, 2), dtype=torch.long)).item() == (
        pytest.approx(np.log(4))
    )


def _case(case_id: str, with_et: bool) -> TrainingCase:
    classes = np.zeros((4, 4, 4), np.uint8)
    classes[1, 1, 1] = 3 if with_et else 1
    return TrainingCase(case_id, np.zeros((4, 4, 4, 4), np.float16), classes, np.argwhere(classes > 0))


def test_cases_without_et_are_drawn_at_the_asked_share_and_zero_draws_as_before():
    cases = [_case(f"et{i}", True) for i in range(9)] + [_case("no-et", False)]
    assert [c.has_et for c in cases].count(False) == 1
    draws = [choose_case(cases, np.random.default_rng([3, i]), 0.5).case_id for i in range(2000)]
    share = draws.count("no-et") / len(draws)
    assert 0.5 + 0.5 * 0.1 - 0.04 < share < 0.55 + 0.04  # half by choice, a tenth of the uniform rest
    # Share 0: the same random stream as the old uniform draw (runs made before the option reproduce).
    rng_new, rng_old = np.random.default_rng(5), np.random.default_rng(5)
    assert [choose_case(cases, rng_new).case_id for _ in range(50)] == [
        cases[rng_old.integers(len(cases))].case_id for _ in range(50)
    ]
    # Nothing without ET to draw: uniform, never an error.
    assert choose_case(cases[:9], np.random.default_rng(0), 1.0).has_et


def test_split_is_seeded_and_disjoint():
    ids = [f"c{i}" for i in range(10)]
    train_ids, val_ids = split_cases(ids, 3, seed=1)
    assert (train_ids, val_ids) == split_cases(ids, 3, seed=1)
    assert len(val_ids) == 3 and not set(train_ids) & set(val_ids)


def test_tumour_centred_patches_contain_tumour(two_phantoms):
    case = load_training_case(discover_cases(two_phantoms)[0], "zscore-brain")
    rng = np.random.default_rng(0)
    for _ in range(5):
        images, classes = sample_patch(case, 32, rng, tumour_fraction=1.0)
        assert images.shape == (3, 32, 32, 32) and classes.shape == (32, 32, 32)
        # z-scored inside the brain (both signs), exact zeros outside it.
        assert (classes > 0).any() and images.min() < 0 < images.max()


def test_narrow_network_learns_on_two_phantoms_and_resumes(two_phantoms, tmp_path):
    settings = TrainingSettings(
        patch=32,
        epochs=2,
        steps_per_epoch=8,
        lr=3e-3,
        l2=0.0,
        tumour_fraction=1.0,
        val_cases=1,
        seed=3,
        base_filters=4,
        precision="fp32",
    )
    state = train(two_phantoms, tmp_path / "run", settings)
    assert state.step == 16 and (tmp_path / "run" / "best.safetensors").exists()

    # The loss on fixed patches falls from the seeded initial network to the trained one.
    case = load_training_case(discover_cases(two_phantoms)[0], "zscore-brain")
    rng = np.random.default_rng(42)
    patches = [sample_patch(case, 32, rng, 1.0) for _ in range(4)]
    x = torch.from_numpy(np.stack([p[0] for p in patches]))
    y = torch.from_numpy(np.stack([p[1] for p in patches]))
    torch.manual_seed(settings.seed)
    initial = LATUPNet(LATUPNetConfig(base_filters=4, statistics="brain", normalization="zscore-brain")).eval()
    trained = load_model(tmp_path / "run" / "last.safetensors")
    with torch.no_grad():
        before, after = weighted_dice_loss(initial(x), y).item(), weighted_dice_loss(trained(x), y).item()
    assert after < before - 0.5, (before, after)

    # Resuming for one more epoch continues from epoch 2 and step 16.
    settings.epochs = 3
    resumed = train(two_phantoms, tmp_path / "run", settings, resume=True)
    assert resumed.epoch == 3 and resumed.step == 24 and len(resumed.history) == 3
    # The poly schedule follows the resumed run's own total: epoch 3 ends on its last, smallest rate.
    rates = [entry["lr"] for entry in resumed.history]
    assert rates[0] > rates[1] > rates[2] > 0


def test_resume_without_a_run_is_refused(two_phantoms, tmp_path):
    with pytest.raises(ValueError, match="nothing to resume"):
        train(two_phantoms, tmp_path / "empty", TrainingSettings(patch=32, base_filters=4), resume=True)


def test_training_with_augmentation_is_reproducible_and_recorded(two_phantoms, tmp_path):
    import json

    settings = TrainingSettings(patch=32, epochs=1, steps_per_epoch=3, l2=0.0, val_cases=1, seed=5, base_filters=4)
    assert settings.augmentation.flip > 0 and settings.augmentation.gamma > 0  # on by default
    runs = [tmp_path / "a", tmp_path / "b"]
    for run in runs:
        train(two_phantoms, run, settings)
    first, second = (load_model(run / "last.safetensors").state_dict() for run in runs)
    assert all(torch.equal(first[k], second[k]) for k in first)
    provenance = json.loads((runs[0] / "last.json").read_text())
    assert provenance["settings"]["augmentation"]["flip"] == settings.augmentation.flip
    assert provenance["config"]["statistics"] == "brain"
    assert provenance["config"]["normalization"] == "zscore-brain"


def test_a_run_stopped_by_its_time_limit_resumes_mid_epoch_to_the_same_weights_with_workers(two_phantoms, tmp_path):
    settings = TrainingSettings(
        patch=32, epochs=2, steps_per_epoch=3, l2=0.0, val_cases=1, seed=7, base_filters=4, precision="fp32"
    )
    straight = train(two_phantoms, tmp_path / "straight", settings)

    # A limit shorter than one step stops after the first step, inside epoch 1, with the run saved there.
    stopped = train(two_phantoms, tmp_path / "chunks", settings, workers=2, max_minutes=1e-9)
    assert (stopped.step, stopped.epoch) == (1, 0)
    assert json.loads((tmp_path / "chunks" / "last.json").read_text())["stopped"] == "time limit"
    resumed = train(two_phantoms, tmp_path / "chunks", settings, resume=True, workers=2)
    assert (resumed.step, resumed.epoch) == (straight.step, straight.epoch) == (6, 2)

    # Batches are seeded by (seed, step): two worker processes and a resume mid-epoch change nothing.
    first, second = (load_model(tmp_path / run / "last.safetensors").state_dict() for run in ("straight", "chunks"))
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_batches_depend_on_seed_and_step_only(two_phantoms):
    from latup_edge.train.batches import BatchStream, draw_batch

    cases = [load_training_case(case, "zscore-brain") for case in discover_cases(two_phantoms)]
    settings = TrainingSettings(patch=32, batch=2, seed=11)
    with BatchStream(cases, settings, range(3, 7), workers=2) as stream:
        drawn = list(stream)
    assert len(drawn) == 4
    for step, (images, classes) in zip(range(3, 7), drawn, strict=True):
        again = draw_batch(cases, settings, step)
        assert images.shape == (2, 3, 32, 32, 32) and np.array_equal(images, again[0])
        assert np.array_equal(classes, again[1])
    assert not np.array_equal(drawn[0][0], drawn[1][0])


def test_poly_schedule_decays_to_near_zero_on_the_runs_own_steps_and_constant_stays():
    from latup_edge.train.loop import learning_rate

    settings = TrainingSettings(epochs=3, steps_per_epoch=10, lr=1e-3)
    rates = [learning_rate(settings, step) for step in range(30)]
    assert rates[0] == pytest.approx(1e-3)
    assert all(later < earlier for earlier, later in zip(rates[:-1], rates[1:], strict=True))
    assert 0 < rates[-1] < 1e-3 / 20
    assert rates[15] == pytest.approx(1e-3 * 0.5**0.9)
    settings.lr_schedule = "constant"
    assert {learning_rate(settings, step) for step in range(30)} == {1e-3}


def test_activation_noise_perturbs_training_only_and_repeats_with_the_seed(two_phantoms, tmp_path):
    import dataclasses

    from latup_edge.train.noise import activation_noise

    model = LATUPNet(LATUPNetConfig(base_filters=4)).eval()
    x = torch.randn(1, 3, 32, 32, 32)
    with torch.no_grad():
        clean = model(x)
        torch.manual_seed(3)
        with activation_noise(model, 0.05):
            noisy = model(x)
        torch.manual_seed(3)
        with activation_noise(model, 0.05):
            again = model(x)
        after = model(x)
    assert not torch.allclose(noisy, clean) and torch.equal(noisy, again)
    assert torch.equal(after, clean)  # the hooks are gone after the block

    settings = TrainingSettings(patch=32, epochs=1, steps_per_epoch=2, l2=0.0, val_cases=1, seed=5, base_filters=4)
    quiet, loud, loud_again = tmp_path / "quiet", tmp_path / "loud", tmp_path / "loud2"
    train(two_phantoms, quiet, settings)
    noisy_settings = dataclasses.replace(settings, activation_noise=0.05)
    train(two_phantoms, loud, noisy_settings)
    train(two_phantoms, loud_again, noisy_settings)
    weights = [load_model(run / "last.safetensors").state_dict() for run in (quiet, loud, loud_again)]
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert all(torch.equal(weights[1][k], weights[2][k]) for k in weights[1])
    assert json.loads((loud / "last.json").read_text())["settings"]["activation_noise"] == 0.05


def test_averaged_weights_are_the_mean_over_the_steps_after_average_from_and_survive_a_resume(two_phantoms, tmp_path):
    settings = TrainingSettings(
        patch=32,
        steps_per_epoch=1,
        lr=3e-3,
        lr_schedule="constant",
        l2=0.0,
        val_cases=0,
        seed=13,
        base_filters=4,
        precision="fp32",
        average_from=1,
    )
    run, weights = tmp_path / "run", []
    for step in (1, 2, 3, 4):  # one step at a time, each run resumed: the average must carry over
        state = train(two_phantoms, run, dataclasses.replace(settings, epochs=step), resume=step > 1)
        weights.append(load_model(run / "last.safetensors").state_dict())
    assert (state.step, state.averaged) == (4, 3)

    # The weights after steps 2, 3 and 4 are averaged, step 1's are not.
    average = load_model(run / "average.safetensors").state_dict()
    for name, value in average.items():
        expected = torch.stack([w[name] for w in weights[1:]]).mean(0)
        assert torch.allclose(value, expected, atol=1e-6, rtol=1e-5), name
    assert any(not torch.allclose(average[k], weights[-1][k]) for k in average)
    provenance = json.loads((run / "average.json").read_text())
    assert provenance["averaged_steps"] == [2, 4] and provenance["settings"]["average_from"] == 1


def test_without_average_from_no_average_is_written(two_phantoms, tmp_path):
    settings = TrainingSettings(patch=32, epochs=1, steps_per_epoch=2, l2=0.0, val_cases=0, seed=13, base_filters=4)
    state = train(two_phantoms, tmp_path / "run", settings)
    assert state.averaged == 0 and not (tmp_path / "run" / "average.safetensors").exists()


def test_the_train_command_keeps_the_average_it_is_asked_for(two_phantoms, tmp_path):
    from typer.testing import CliRunner

    from latup_edge.cli import app

    run = tmp_path / "run"
    flags = ["--patch", "32", "--epochs", "1", "--steps-per-epoch", "3", "--base-filters", "4", "--val-cases", "0"]
    result = CliRunner().invoke(
        app, ["train", str(two_phantoms), "-o", str(run), *flags, "--lr-schedule", "constant", "--average-from", "1"]
    )
    assert result.exit_code == 0, result.output
    assert "Averaged over the last 2 steps" in result.output
    assert json.loads((run / "average.json").read_text())["averaged_steps"] == [2, 3]
