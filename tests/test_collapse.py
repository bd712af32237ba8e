"""Collapse onset: the entropy trace a fine-tune records, and the onset read from it."""

import math

import pytest
import torch

from clipdrift.analysis.collapse import collapse_columns, collapse_onset, trace_points
from clipdrift.analysis.tables import run_table
from clipdrift.measure.attention import cls_patch_distribution, entropy
from clipdrift.measure.runtime import model_input
from clipdrift.model.backbones import capture_attention
from clipdrift.train.engine import finetune
from clipdrift.train.resume import ResumeStore
from clipdrift.train.trace import TRACE_IMAGES

from conftest import make_tiny
from test_regularisers import run_config
from test_train import TRAIN, VAL, assert_same_states, without_timings


def test_onset_is_the_first_point_one_percent_below_pretrained_as_a_fraction_of_training():
    points = [(10, 2.00), (20, 1.985), (30, 1.979), (40, 1.90), (50, 2.1)]
    assert collapse_onset(points, pretrained=2.0, total_steps=100) == 0.30  # 1.979 <= 0.99 * 2.0 = 1.98
    assert collapse_onset(points, pretrained=2.0, total_steps=100, drop=0.05) == 0.40
    assert math.isnan(collapse_onset(points[:2], pretrained=2.0, total_steps=100))  # never


def test_the_run_tables_collapse_columns_come_from_the_trace_in_the_history():
    history = {"entropy_trace": {"every": 5, "images": 32, "pretrained": 2.0, "total_steps": 20},
               "epochs": [{"entropy_trace": [[5, 2.01], [10, 1.97]]}, {"entropy_trace": [[15, 1.5], [20, 1.6]]}]}
    assert trace_points(history) == [(5, 2.01), (10, 1.97), (15, 1.5), (20, 1.6)]
    assert collapse_columns(history) == {"collapse_onset": 0.5, "trace_min_drift_pct": pytest.approx(-25.0)}
    untraced = collapse_columns({"epochs": [{}]})
    assert math.isnan(untraced["collapse_onset"]) and math.isnan(untraced["trace_min_drift_pct"])
    run = {"dataset": "d", "method": "full", "lr": "1e-04", "seed": 0, **history}
    table = run_table([run], None, None, None)
    assert table.loc[0, "collapse_onset"] == 0.5


def test_a_traced_run_trains_the_same_weights_and_records_the_entropy_every_n_steps(tmp_path):
    traced = finetune(make_tiny("full", n_classes=4), TRAIN, VAL, run_config(entropy_trace_every=2), progress=False)
    plain = finetune(make_tiny("full", n_classes=4), TRAIN, VAL, run_config(), progress=False)
    assert_same_states(traced.final_state, plain.final_state)  # measuring in eval mode changes nothing
    assert "entropy_trace" not in plain.history and "entropy_trace" not in plain.history["epochs"][0]
    steps = [step for step, _ in trace_points(traced.history)]
    assert steps == list(range(2, traced.history["steps"] + 1, 2))
    record = traced.history["entropy_trace"]
    assert record["every"] == 2 and record["images"] == min(TRACE_IMAGES, len(VAL))
    assert record["total_steps"] == traced.history["steps"]
    fresh = make_tiny("full", n_classes=4)  # the pretrained value, measured the way the study measures attention
    with torch.no_grad(), capture_attention(fresh.clip) as maps:
        fresh.eval()(model_input(fresh, VAL.images[:TRACE_IMAGES]))
    expected = torch.stack([entropy(cls_patch_distribution(layer[0])).mean() for layer in maps]).mean()
    assert record["pretrained"] == pytest.approx(float(expected), abs=1e-5)


def test_a_resumed_traced_run_has_the_whole_trace(tmp_path):
    store = ResumeStore(tmp_path / "resume")

    def crash(entry):
        if entry["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(make_tiny("full", n_classes=4), TRAIN, VAL, run_config(entropy_trace_every=1), resume=store,
                 progress=False, on_epoch_end=crash)
    resumed = finetune(make_tiny("full", n_classes=4), TRAIN, VAL, run_config(entropy_trace_every=1), resume=store,
                       progress=False)
    whole = finetune(make_tiny("full", n_classes=4), TRAIN, VAL, run_config(entropy_trace_every=1), progress=False)
    assert resumed.history["resumed_from_epoch"] == 2
    assert without_timings(resumed.history) == without_timings(whole.history)


def test_a_high_learning_rate_collapses_the_attention_and_a_low_one_does_not():
    def onset(lr):
        result = finetune(make_tiny("full", n_classes=4), TRAIN, VAL, run_config(epochs=4, lr=lr, entropy_trace_every=1),
                          progress=False)
        return collapse_columns(result.history)["collapse_onset"]

    assert 0 < onset(3e-2) < 1  # the entropy falls (see test_regularisers) at some point of training
    assert math.isnan(onset(1e-5))


def test_the_traces_table_and_the_collapse_figure():
    from clipdrift.analysis.traces import entropy_traces
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
    assert collapse_traces(entropy_traces([])) is None
