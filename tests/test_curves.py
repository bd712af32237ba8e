"""A run's curves: interpolation points and kept epochs measured like checkpoints, with the
end points equal to what the run's own measurements give."""

import copy

import pandas as pd
import pytest
import torch
from tiny_models import TINY, make_tiny

from clipdrift.measure import curves
from clipdrift.measure.curves import CurveInputs, curve_table, measure
from clipdrift.measure.extract import extract, probe_reference
from clipdrift.measure.settings import AttentionConfig, CKAConfig
from clipdrift.measure.zeroshot import evaluate as zeroshot_evaluate
from clipdrift.model.backbones import build_classifier
from clipdrift.train.config import TrainConfig
from clipdrift.train.engine import finetune
from clipdrift.train.evaluate import evaluate

from test_metrics import make_probe
from test_train import N_CLASSES, TEST, TRAIN, VAL

ATTENTION = AttentionConfig(batch_size=8)


@pytest.fixture(scope="module")
def setting():
    pretrained = build_classifier(TINY, N_CLASSES, seed=0)
    probe = make_probe(12)
    reference = probe_reference(pretrained, probe, ATTENTION, CKAConfig(batch_size=8))
    zeroshot = make_probe(20, seed=3)
    weights = torch.nn.functional.normalize(torch.randn(64, 4, generator=torch.Generator().manual_seed(0)), dim=0)
    inputs = CurveInputs(TEST, probe, reference, {"held": (zeroshot, weights)}, ATTENTION, eval_batch_size=16)
    return pretrained, inputs


def _held(inputs):
    return inputs.zeroshot["held"][1], inputs.zeroshot["held"][0]


@pytest.mark.parametrize("method", ["full", "lora"])
def test_alpha_one_is_the_run_and_alpha_zero_the_pretrained_model(setting, method):
    pretrained, inputs = setting
    finetuned = make_tiny(method, n_classes=N_CLASSES)
    finetune(finetuned, TRAIN, VAL, TrainConfig(epochs=2, lr=3e-3, batch_size=16, seed=5), test=TEST, progress=False)
    table = curve_table(finetuned, pretrained, inputs, alphas=[0, 0.5, 1])
    assert list(table["point"]) == [0.0, 0.5, 1.0] and set(table["kind"]) == {"alpha"}
    end, start = table.iloc[-1], table.iloc[0]
    # alpha 1: the run's own numbers, as its fine-tune, zero-shot and extraction jobs measure them
    assert end["indomain_acc"] == evaluate(finetuned, TEST, batch_size=16)
    assert end["zs_top1"] == zeroshot_evaluate(finetuned, *_held(inputs))["top1"] and set(table["task"]) == {"held"}
    drift = extract(finetuned, inputs.reference, inputs.probe, ATTENTION, CKAConfig(batch_size=8))["attention"]
    rows = drift.query("metric == 'entropy' and head == -1 and layer >= 0").pivot(index="layer", columns="state",
                                                                                   values="value").mean()
    assert end["drift_entropy_pct"] == pytest.approx(100 * (rows["final"] - rows["baseline"]) / rows["baseline"],
                                                      rel=1e-9)
    # alpha 0: the pretrained tower (zero-shot needs no head) and no drift
    assert start["zs_top1"] == zeroshot_evaluate(pretrained, *_held(inputs))["top1"]
    assert start["drift_entropy_pct"] == pytest.approx(0, abs=1e-9) and start["drift_erf_pct"] == pytest.approx(0, abs=1e-9)
    assert not finetuned.training


def test_kept_epochs_are_measured_like_the_final_weights(setting):
    pretrained, inputs = setting
    model = make_tiny("full", n_classes=N_CLASSES)
    kept = {}
    finetune(model, TRAIN, VAL, TrainConfig(epochs=2, lr=3e-3, batch_size=16, seed=5), progress=False,
             snapshot=lambda epoch: kept.update({epoch: {k: v.clone() for k, v in model.state_dict().items()}}))

    def loader(epoch):
        def load():
            snapshot = make_tiny("full", n_classes=N_CLASSES)
            snapshot.load_state_dict(kept[epoch])
            return snapshot
        return load

    table = curve_table(model, pretrained, inputs, alphas=[1], epoch_models=[(e, loader(e)) for e in sorted(kept)],
                        reuse_known=False)
    assert list(zip(table["kind"], table["point"])) == [("alpha", 1.0), ("epoch", 1.0), ("epoch", 2.0)]
    final, last_epoch = table.iloc[0], table.iloc[2]  # the last kept epoch is the final weights
    for column in ("indomain_acc", "zs_top1", "drift_entropy_pct", "drift_erf_pct"):
        assert final[column] == pytest.approx(last_epoch[column], rel=1e-12), column
    assert measure(model, inputs)["held"]["indomain_acc"] == final["indomain_acc"]


def _trained_with_snapshots(method):
    model = make_tiny(method, n_classes=N_CLASSES)
    kept = {}
    finetune(model, TRAIN, VAL, TrainConfig(epochs=2, lr=3e-3, batch_size=16, seed=5), progress=False,
             snapshot=lambda epoch: kept.update({epoch: {k: v.clone() for k, v in model.state_dict().items()}}))

    def loader(epoch):
        def load():
            snapshot = make_tiny(method, n_classes=N_CLASSES)
            snapshot.load_state_dict(kept[epoch])
            return snapshot.eval()
        return load

    return model, [(epoch, loader(epoch)) for epoch in sorted(kept)]


@pytest.mark.parametrize("method", ["full", "lora"])
def test_known_states_reused_are_exactly_what_measuring_them_gives(setting, method):
    pretrained, inputs = setting
    finetuned, epochs = _trained_with_snapshots(method)
    # the score the zeroshot_classifier job stores for the pretrained model
    pretrained_zs = {"held": zeroshot_evaluate(pretrained, *_held(inputs), batch_size=inputs.zeroshot_batch_size)["top1"]}
    reused = curve_table(finetuned, pretrained, inputs, [0, 0.5, 1], epochs, pretrained_zs_top1=pretrained_zs)
    measured = curve_table(finetuned, pretrained, inputs, [0, 0.5, 1], epochs, pretrained_zs_top1=pretrained_zs,
                           reuse_known=False)
    pd.testing.assert_frame_equal(reused, measured, check_exact=True)
    assert reused.iloc[0]["drift_entropy_pct"] == 0.0 and reused.iloc[0]["zs_top1"] == pretrained_zs["held"]


def test_known_states_are_not_measured_again(setting, monkeypatch):
    pretrained, inputs = setting
    finetuned, epochs = _trained_with_snapshots("full")
    measured = []

    def measure(model, inputs, what):
        measured.append(what)
        return {"held": dict.fromkeys(curves.MEASURED, 0.5)}

    monkeypatch.setattr(curves, "measure", measure)
    curve_table(finetuned, pretrained, inputs, [0, 0.5, 1], epochs, pretrained_zs_top1={"held": 0.25})
    assert measured == ["alpha 0.5", "alpha 1", "epoch 1"]  # epoch 2 is the final weights; alpha 0 the pretrained tower


def test_an_epoch_that_differs_from_the_final_weights_is_measured(setting):
    pretrained, inputs = setting
    finetuned, epochs = _trained_with_snapshots("full")
    first = epochs[0][1]()
    assert not curves.same_weights(first, finetuned) and curves.same_weights(epochs[-1][1](), finetuned)
    half = copy.deepcopy(first).half()
    assert not curves.same_weights(half, first)  # same values, other dtype: not the same weights


def test_every_state_is_scored_on_every_held_out_task_of_the_suite(setting):
    pretrained, inputs = setting
    second = make_probe(12, seed=9)
    weights = torch.nn.functional.normalize(torch.randn(64, 4, generator=torch.Generator().manual_seed(1)), dim=0)
    suite = CurveInputs(inputs.test, inputs.probe, inputs.reference, {**inputs.zeroshot, "other": (second, weights)},
                        ATTENTION, eval_batch_size=16)
    finetuned = make_tiny("lora", n_classes=N_CLASSES)
    table = curve_table(finetuned, pretrained, suite, alphas=[0.5, 1])
    assert list(zip(table["point"], table["task"])) == [(0.5, "held"), (0.5, "other"), (1.0, "held"), (1.0, "other")]
    end = table[table["point"] == 1.0].set_index("task")
    assert end.loc["other", "zs_top1"] == zeroshot_evaluate(finetuned, weights, second)["top1"]
    assert end.loc["held", "indomain_acc"] == end.loc["other", "indomain_acc"]  # shared by the tasks of a state
