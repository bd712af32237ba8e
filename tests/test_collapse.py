"""Collapse onset: the entropy trace a fine-tune records, and the onset read from it."""

import math

import pandas as pd
import pytest
import torch
from tiny_models import make_tiny

from clipdrift.analysis.collapse import (
    ONSET_THRESHOLDS_PCT,
    collapse_columns,
    collapse_onset,
    published_onset,
    steepest_drop,
    trace_points,
)
from clipdrift.analysis.tables import run_table
from clipdrift.measure.attention import cls_patch_distribution, entropy
from clipdrift.measure.runtime import model_input
from clipdrift.model.backbones import capture_attention
from clipdrift.train.config import TrainConfigError
from clipdrift.train.engine import finetune
from clipdrift.train.resume import ResumeStore

from test_regularisers import run_config
from test_train import TRAIN, VAL, assert_same_states, colour_split, without_timings


def test_onset_is_the_first_point_one_percent_below_pretrained_as_a_fraction_of_training():
    points = [(10, 2.00), (20, 1.985), (30, 1.979), (40, 1.90), (50, 2.1)]
    assert collapse_onset(points, pretrained=2.0, total_steps=100) == 0.30  # 1.979 <= 0.99 * 2.0 = 1.98
    assert collapse_onset(points, pretrained=2.0, total_steps=100, drop=0.05) == 0.40
    assert math.isnan(collapse_onset(points[:2], pretrained=2.0, total_steps=100))  # never


def test_the_published_onset_is_the_first_index_strictly_below_the_first_trace_point_over_the_trace_length():
    values = [2.0, 1.99, 1.98, 1.96, 1.90, 2.1]
    assert published_onset(values, 0.005) == 2 / 6  # 1.98 < 0.995 * 2.0 = 1.99; 1.99 itself is not below
    assert published_onset(values, 0.01) == 3 / 6  # 1.98 is not strictly below 1.98
    assert published_onset(values, 0.02) == 4 / 6
    assert math.isnan(published_onset(values, 0.10)) and math.isnan(published_onset([], 0.01))
    assert ONSET_THRESHOLDS_PCT == (0.5, 1.0, 2.0)  # the published thresholds


def test_the_steepest_drop_is_numpys_gradient_argmin_over_the_trace_length():
    values = [2.0, 1.99, 1.98, 1.6, 1.55, 1.5]  # numpy.gradient: [-0.01, -0.01, -0.195, -0.215, -0.05, -0.05]
    assert steepest_drop(values) == 3 / 6
    assert math.isnan(steepest_drop([2.0]))


def test_the_run_tables_collapse_columns_come_from_the_trace_in_the_history():
    history = {"entropy_trace": {"every": 5, "images": 32, "pretrained": 2.0, "total_steps": 20},
               "epochs": [{"entropy_trace": [[5, 2.01], [10, 1.97]]}, {"entropy_trace": [[15, 1.5], [20, 1.6]]}]}
    assert trace_points(history) == [(5, 2.01), (10, 1.97), (15, 1.5), (20, 1.6)]
    columns = collapse_columns(history)
    assert columns == {"collapse_onset": 0.5, "trace_min_drift_pct": pytest.approx(-25.0),
                       "steepest_drop_published": 1 / 4,  # gradient [-0.04, -0.255, -0.185, 0.1]
                       "collapse_onset_0.5": 0.5, "collapse_onset_1": 0.5, "collapse_onset_2": 0.75,
                       "collapse_onset_0.5_published": 1 / 4, "collapse_onset_1_published": 1 / 4,
                       "collapse_onset_2_published": 2 / 4}
    untraced = collapse_columns({"epochs": [{}]})
    assert set(untraced) == set(columns) and all(math.isnan(value) for value in untraced.values())
    run = {"dataset": "d", "method": "full", "lr": "1e-04", "seed": 0, **history}
    table = run_table([run], None, None, None)
    assert table.loc[0, "collapse_onset"] == 0.5


PROBE = VAL.subset(torch.arange(0, len(VAL), 2))  # a probe: what the study's drift metrics read


def test_a_traced_run_trains_the_same_weights_and_records_the_probes_entropy_after_step_one_then_every_n():
    traced = finetune(make_tiny("full", n_classes=4), TRAIN, VAL, run_config(entropy_trace_every=2), progress=False,
                      probe=PROBE)
    plain = finetune(make_tiny("full", n_classes=4), TRAIN, VAL, run_config(), progress=False)
    assert_same_states(traced.final_state, plain.final_state)  # measuring in eval mode changes nothing
    assert "entropy_trace" not in plain.history and "entropy_trace" not in plain.history["epochs"][0]
    steps = [step for step, _ in trace_points(traced.history)]
    assert steps == list(range(1, traced.history["steps"] + 1, 2))  # as published: after step 1, then every 2
    record = traced.history["entropy_trace"]
    assert record["every"] == 2 and record["images"] == len(PROBE)
    assert record["total_steps"] == traced.history["steps"]
    fresh = make_tiny("full", n_classes=4)  # the pretrained value, measured the way the study measures attention
    with torch.no_grad(), capture_attention(fresh.clip) as maps:
        fresh.eval()(model_input(fresh, PROBE.images))
    expected = torch.stack([entropy(cls_patch_distribution(layer[0])).mean() for layer in maps]).mean()
    assert record["pretrained"] == pytest.approx(float(expected), abs=1e-5)


def test_five_points_per_epoch_trace_every_steps_per_epoch_over_five_steps():
    config = run_config(epochs=2, batch_size=4, entropy_trace_per_epoch=5)
    traced = finetune(make_tiny("full", n_classes=4), TRAIN, VAL, config, progress=False, probe=PROBE)
    per_epoch = math.ceil(len(TRAIN) / 4)
    interval = max(1, per_epoch // 5)
    assert traced.history["entropy_trace"]["every"] == interval
    assert [step for step, _ in trace_points(traced.history)] == list(range(1, 2 * per_epoch + 1, interval))
    with pytest.raises(TrainConfigError, match="entropy_trace_every or entropy_trace_per_epoch, not both"):
        run_config(entropy_trace_every=2, entropy_trace_per_epoch=5)
    with pytest.raises(TrainConfigError, match="measure against the study's probe"):
        finetune(make_tiny("full", n_classes=4), TRAIN, VAL, config, progress=False)


def test_a_resumed_traced_run_has_the_whole_trace(tmp_path):
    store = ResumeStore(tmp_path / "resume")

    def crash(entry):
        if entry["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(make_tiny("full", n_classes=4), TRAIN, VAL, run_config(entropy_trace_every=1), resume=store,
                 progress=False, on_epoch_end=crash, probe=PROBE)
    resumed = finetune(make_tiny("full", n_classes=4), TRAIN, VAL, run_config(entropy_trace_every=1), resume=store,
                       progress=False, probe=PROBE)
    whole = finetune(make_tiny("full", n_classes=4), TRAIN, VAL, run_config(entropy_trace_every=1), progress=False,
                     probe=PROBE)
    assert resumed.history["resumed_from_epoch"] == 2
    assert without_timings(resumed.history) == without_timings(whole.history)


def test_a_high_learning_rate_collapses_the_attention_and_a_low_one_does_not():
    def onset(lr):
        result = finetune(make_tiny("full", n_classes=4), TRAIN, VAL, run_config(epochs=4, lr=lr, entropy_trace_every=1),
                          progress=False, probe=PROBE)
        return collapse_columns(result.history)["collapse_onset"]

    assert 0 < onset(3e-2) < 1  # the entropy falls (see test_regularisers) at some point of training
    assert math.isnan(onset(1e-5))


def test_the_traces_table_and_the_collapse_figure():
    from clipdrift.analysis.traces import entropy_traces, trace_onsets
    from clipdrift.report.trace_figures import collapse_traces

    history = {"dataset": "d", "method": "full", "lr": "1e-03", "seed": 1,
               "entropy_trace": {"every": 5, "images": 32, "pretrained": 2.0, "total_steps": 10},
               "epochs": [{"entropy_trace": [[5, 1.9]]}, {"entropy_trace": [[10, 1.5]]}]}
    traces = entropy_traces([history, {**history, "method": "lora", "entropy_trace": None}])
    assert traces[["step", "fraction", "drift_pct"]].values.tolist() == [[5, 0.5, pytest.approx(-5.0)],
                                                                        [10, 1.0, pytest.approx(-25.0)]]
    figure = collapse_traces(traces)
    assert len(figure.axes) == 1 and figure.axes[0].get_title() == "d · lr 1e-03"
    assert list(figure.axes[0].lines[0].get_ydata()) == pytest.approx([-5.0, -25.0])
    # the onset marker: where the entropy first fell 1% below pretrained (half-way), on the threshold
    marker = figure.axes[0].lines[1]
    assert list(marker.get_xdata()) == pytest.approx([50.0]) and list(marker.get_ydata()) == pytest.approx([-1.0])
    onsets = trace_onsets(pd.concat([traces, traces.assign(seed=2, drift_pct=-0.5)]))
    assert onsets[["onset", "n_collapsed", "n_seeds"]].values.tolist() == [[0.5, 1, 2]]  # seed 2 never fell 1%
    assert collapse_traces(entropy_traces([])) is None


def test_on_a_dataset_stored_class_by_class_the_trace_and_the_floor_measure_a_class_balanced_probe():
    from clipdrift.data.sampling import with_probe
    from clipdrift.train.regularisers import AttentionRegulariser, RegulariserConfig, layer_entropies

    stored = colour_split(12, 500)  # 48 images, class 0 first, then class 1, ... (the order splits are stored in)
    assert stored.labels[:16].unique().tolist() == [0, 1]  # the first 16 images: two classes of four
    splits, _ = with_probe({"train": TRAIN, "val": VAL, "test": stored}, {"splits": {}}, source="test", n=16, seed=42)
    probe = splits["probe"]
    assert torch.bincount(probe.labels, minlength=4).tolist() == [4, 4, 4, 4]  # drawn, class-balanced
    traced = finetune(make_tiny("full", n_classes=4), TRAIN, VAL, run_config(entropy_trace_every=4), progress=False,
                      probe=probe)
    assert traced.history["entropy_trace"]["images"] == 16
    model = make_tiny("full", n_classes=4)
    floor = AttentionRegulariser(RegulariserConfig("entropy_floor", 1.0), model, model_input(model, probe.images))
    torch.testing.assert_close(floor.thresholds, 0.7 * layer_entropies(model.clip, model_input(model, probe.images)))
