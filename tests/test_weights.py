"""The weight-space drift measures on matrices with known answers."""

import math
from pathlib import Path

import pytest
import torch

from clipdrift.measure.weights import (
    MatrixChange,
    basis_overlap,
    effective_rank,
    energy_rank,
    intruders,
    left_basis,
    magnitude_direction,
    random_intruders,
    singular_values,
    stable_rank,
    subspace_overlap,
)


def test_spectrum_shapes_of_known_spectra():
    flat, spike = torch.ones(4, dtype=torch.float64), torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    assert effective_rank(flat) == pytest.approx(4.0) and effective_rank(spike) == pytest.approx(1.0)
    assert effective_rank(torch.tensor([1.0, 1.0, 2.0], dtype=torch.float64)) == pytest.approx(
        math.exp(-(2 * 0.25 * math.log(0.25) + 0.5 * math.log(0.5))))
    assert stable_rank(torch.tensor([4.0, 3.0], dtype=torch.float64)) == pytest.approx(25 / 16)
    energies = torch.tensor([9.0, 3.0, 1.0, 1.0], dtype=torch.float64)  # squares 81, 9, 1, 1 of 92
    assert energy_rank(energies) == 2 and energy_rank(energies, 0.88) == 1 and energy_rank(energies, 1.0) == 4
    assert effective_rank(torch.zeros(3)) == stable_rank(torch.zeros(3)) == energy_rank(torch.zeros(3)) == 0


def test_the_rank_of_a_low_rank_change_is_its_rank():
    generator = torch.Generator().manual_seed(0)
    change = (torch.randn(40, 3, generator=generator, dtype=torch.float64)
              @ torch.randn(3, 30, generator=generator, dtype=torch.float64))
    values = singular_values(change)
    assert int((values > 1e-9 * values.max()).sum()) == 3 and energy_rank(values, 0.999999) <= 3
    assert 1.0 <= effective_rank(values) <= 3.0 and 1.0 <= stable_rank(values) <= 3.0


def test_a_direction_orthogonal_enough_to_every_pretrained_one_is_an_intruder():
    pretrained = torch.diag(torch.tensor([6.0, 5.0, 4.0, 3.0, 2.0, 1.0], dtype=torch.float64))  # U0 = the axes
    spread = torch.ones(6, dtype=torch.float64) / math.sqrt(6)  # cos 0.41 with every axis
    tuned = pretrained + 20.0 * torch.outer(spread, spread)
    found = intruders(pretrained, tuned, top_k=1, epsilon=0.5)
    assert found["count"] == 1 and found["indices"] == [0] and found["max_cosines"][0] < 0.5
    assert 0.5 < found["energy_share"] < 1.0
    assert intruders(pretrained, tuned, top_k=1, epsilon=0.4)["count"] == 0  # 0.41 is not below 0.4
    aligned = pretrained + 20.0 * torch.outer(torch.eye(6, dtype=torch.float64)[2], torch.eye(6, dtype=torch.float64)[2])
    assert intruders(pretrained, aligned, top_k=3)["count"] == 0  # grew along a pretrained direction
    assert intruders(pretrained, pretrained)["count"] == 0


def test_a_planted_rank_one_change_orthogonal_to_the_top_k_and_larger_than_the_top_value_is_one_intruder_at_0():
    generator = torch.Generator().manual_seed(6)
    pretrained = torch.randn(64, 48, generator=generator, dtype=torch.float64)
    left, values, _ = torch.linalg.svd(pretrained, full_matrices=False)
    # orthogonal to the top 10 pretrained left singular vectors, spread over the other 38 (|cos| 1/sqrt(38) with each)
    u = left[:, 10:].sum(dim=1) / math.sqrt(38)
    v = torch.randn(48, generator=generator, dtype=torch.float64)
    tuned = pretrained + 3 * float(values[0]) * torch.outer(u, v / v.norm())
    found = intruders(pretrained, tuned, top_k=10, epsilon=0.5)
    assert found["count"] == 1 and found["indices"] == [0], found
    assert intruders(pretrained, pretrained)["count"] == 0  # unchanged: known without an SVD
    assert intruders(pretrained, 1.001 * pretrained)["count"] == 0  # the same directions, through the SVD


def test_random_directions_in_high_dimension_count_as_intruders_and_in_low_ones_do_not():
    generator = torch.Generator().manual_seed(1)
    assert random_intruders(left_basis(torch.randn(3, 3, generator=generator))) == 0  # |cos| >= 1/sqrt(3) > 0.5 always
    assert random_intruders(left_basis(torch.randn(768, 768, generator=generator))) == 10  # cosines ~ 0.1 at d = 768


def test_magnitude_and_direction_separate():
    generator = torch.Generator().manual_seed(2)
    pretrained = torch.randn(5, 8, generator=generator, dtype=torch.float64)
    scaled = magnitude_direction(pretrained, 2 * pretrained)
    assert scaled["delta_direction"] == pytest.approx(0.0, abs=1e-12)
    assert scaled["delta_magnitude"] == pytest.approx(float(pretrained.norm(dim=1).mean()))
    factors = torch.tensor([0.5, 1.0, 1.5, 2.0, 3.0], dtype=torch.float64)  # each row its own scale
    rows = magnitude_direction(pretrained, factors[:, None] * pretrained)
    assert rows["delta_direction"] == pytest.approx(0.0, abs=1e-12)
    assert rows["delta_magnitude"] == pytest.approx(float(((factors - 1).abs() * pretrained.norm(dim=1)).mean()))
    rotation = torch.linalg.qr(torch.randn(8, 8, generator=generator, dtype=torch.float64)).Q
    turned = magnitude_direction(pretrained, pretrained @ rotation)
    assert turned["delta_magnitude"] == pytest.approx(0.0, abs=1e-12) and turned["delta_direction"] > 0.1


def test_subspace_overlap_is_one_for_the_same_subspace_and_zero_for_orthogonal_ones():
    eye = torch.eye(6, dtype=torch.float64)
    a = 3 * torch.outer(eye[0], eye[0]) + 2 * torch.outer(eye[1], eye[1])
    same_span = 5 * torch.outer(eye[1], eye[3]) + torch.outer(eye[0], eye[4])
    other = 3 * torch.outer(eye[2], eye[0]) + 2 * torch.outer(eye[5], eye[1])
    assert subspace_overlap(a, same_span, 2) == pytest.approx(1.0)
    assert subspace_overlap(a, other, 2) == pytest.approx(0.0, abs=1e-12)
    half = 3 * torch.outer(eye[0], eye[0]) + 2 * torch.outer(eye[2], eye[1])
    assert subspace_overlap(a, half, 2) == pytest.approx(0.5)


def test_intruder_detection_agrees_with_peft_reduce_intruder_dimension():
    """peft's own detection (peft.tuners.lora.intruders, its code: top-k left singular vectors of the
    merged weight, max |cos| with the base weight's, below epsilon) counts what ours counts, layer by layer."""
    import re

    import peft
    from peft.tuners.lora.intruders import reduce_intruder_dimension

    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(24, 32), torch.nn.Linear(32, 32), torch.nn.Linear(32, 16))
    tuned = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["0", "1", "2"]))
    counted = {}
    for name, layer in tuned.named_modules():
        if isinstance(layer, peft.tuners.lora.LoraLayer):
            layer.lora_B["default"].weight.data.normal_(0, 3.0)  # a change large enough to reorder the spectrum
            base = layer.get_base_layer().weight.data
            counted[name] = intruders(base, base + layer.get_delta_weight("default"), top_k=10, epsilon=0.5)["count"]
    logged = []
    reduce_intruder_dimension(tuned, top_k=10, threshold_epsilon=0.5, logging_sink=logged.append)
    theirs = {}
    for line in logged:
        if match := re.fullmatch(r"(.+): (?:Intruders: (\d+)|No intruders)", line):
            theirs[match.group(1)] = int(match.group(2) or 0)
    assert theirs == counted and any(counted.values()), (theirs, counted)


# --- the tower's matrices as a run computes with them ------------------------------------------


def test_a_lora_towers_matrices_are_its_base_weights_with_the_adapters_merged_as_its_forward_computes():
    from tiny_models import make_tiny

    from clipdrift.model.weights import BLOCK_MATRICES, PROJECTION, PROJECTION_LAYER, tower_matrices

    plain, adapted = make_tiny("full"), make_tiny("lora").eval()  # eval: no LoRA dropout
    torch.manual_seed(4)
    for name, parameter in adapted.named_parameters():
        if "lora_B" in name:
            parameter.data.normal_(0, 0.5)  # a trained adapter (peft starts B at zero)
    merged, base = tower_matrices(adapted), tower_matrices(plain)
    blocks = len(adapted.clip.visual.transformer.resblocks)
    assert set(merged) == {(b, m) for b in range(blocks) for m in BLOCK_MATRICES} | {(PROJECTION_LAYER, PROJECTION)}
    attention = adapted.clip.visual.transformer.resblocks[0].attn
    x = torch.randn(3, attention.q_proj.in_features)
    for name in ("q_proj", "k_proj", "v_proj"):
        module = getattr(attention, name)
        bias = module.get_base_layer().bias if hasattr(module, "get_base_layer") else module.bias
        assert torch.allclose(module(x), torch.nn.functional.linear(x, merged[(0, name)], bias), atol=1e-5), name
    assert not torch.equal(merged[(0, "q_proj")], base[(0, "q_proj")])  # the adapter's change is in it
    assert torch.equal(merged[(0, "k_proj")], base[(0, "k_proj")])  # no adapter on k: the pretrained weight
    assert merged[(PROJECTION_LAYER, PROJECTION)].shape == adapted.clip.visual.proj.T.shape


def test_a_full_ft_towers_drift_rows_name_every_matrix_and_a_tower_against_itself_has_none():
    from tiny_models import make_tiny

    from clipdrift.measure.weights import WEIGHT_COLUMNS, weight_rows
    from clipdrift.model.weights import tower_matrices

    pretrained = tower_matrices(make_tiny("full"))
    tuned = {key: weight + 0.01 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(5))
             for key, weight in pretrained.items()}
    rows = weight_rows(pretrained, tuned)
    assert [list(row) for row in rows] == [WEIGHT_COLUMNS] * len(pretrained)
    assert all(row["relative_drift"] > 0 and row["rank90"] > 1 for row in rows)  # random noise: high rank
    unchanged = weight_rows(pretrained, pretrained)
    assert all(row["relative_drift"] == 0 and row["rank90"] == 0 and row["intruders"] == 0 for row in unchanged)
    with pytest.raises(ValueError, match="the towers differ"):
        weight_rows(pretrained, {key: value for key, value in list(pretrained.items())[1:]})


def test_float32_on_an_accelerator_agrees_with_float64_to_the_stated_tolerance():
    """The GPU's precision, run here: the same measures in float32 (working_dtype of a CUDA device)."""
    from clipdrift.measure import weights

    generator = torch.Generator().manual_seed(7)
    pretrained = torch.randn(96, 96, generator=generator)
    tuned = pretrained + 0.3 * torch.randn(96, 4, generator=generator) @ torch.randn(4, 96, generator=generator)
    exact = MatrixChange(pretrained, tuned).drift()
    assert weights.working_dtype("cuda") == torch.float32 and weights.working_dtype("cpu") == torch.float64
    original = weights.working_dtype
    weights.working_dtype = lambda device: torch.float32  # what a CUDA device gets, on the CPU
    try:
        single = MatrixChange(pretrained, tuned)
        assert single.delta.dtype == torch.float32
        approximate = single.drift()
    finally:
        weights.working_dtype = original
    for column in ("relative_drift", "intruder_energy", "delta_magnitude", "delta_direction"):
        assert approximate[column] == pytest.approx(exact[column], rel=weights.FLOAT32_TOLERANCE, abs=1e-7), column
    for column in ("rank90", "intruders", "random_intruders"):
        assert approximate[column] == exact[column], column


def test_a_change_and_its_basis_overlap_as_the_changes_do():
    generator = torch.Generator().manual_seed(8)
    pretrained = torch.randn(20, 12, generator=generator, dtype=torch.float64)
    change = (torch.randn(20, 2, generator=generator, dtype=torch.float64)
              @ torch.randn(2, 12, generator=generator, dtype=torch.float64))
    one, other = MatrixChange(pretrained, pretrained + change), MatrixChange(pretrained, pretrained - 2 * change)
    assert one.delta_basis(8).shape == (20, 2)  # no more directions than the change has
    assert basis_overlap(one.delta_basis(2), other.delta_basis(2)) == pytest.approx(1.0)
    assert MatrixChange(pretrained, pretrained).delta_basis(8).shape == (20, 0)


def test_the_studys_intruder_defaults_are_peft_s_and_the_measures_own():
    """Shuttleworth et al.'s k = 10, epsilon = 0.5 as peft's reduce_intruder_dimension defaults them."""
    import inspect

    import yaml
    from peft.tuners.lora.intruders import reduce_intruder_dimension

    from clipdrift.measure import weights

    schema = yaml.safe_load((Path(__file__).parents[1] / "workflow/schemas/config.schema.yaml").read_text())
    schema = schema["properties"]["weights"]["properties"]
    peft_defaults = inspect.signature(reduce_intruder_dimension).parameters
    assert schema["top_k"]["default"] == peft_defaults["top_k"].default == weights.INTRUDER_TOP_K
    assert schema["epsilon"]["default"] == peft_defaults["threshold_epsilon"].default == weights.INTRUDER_EPSILON
    assert schema["energy_share"]["default"] == weights.ENERGY_SHARE


def test_a_merged_lora_change_has_rank_at_most_r_on_every_adapted_matrix_and_none_elsewhere():
    from tiny_models import make_tiny

    from clipdrift.measure.settings import WeightSettings
    from clipdrift.measure.weight_drift import pretrained_bases, weight_drift
    from clipdrift.model.weights import tower_matrices

    plain, adapted = make_tiny("full"), make_tiny("lora").eval()
    torch.manual_seed(9)
    for name, parameter in adapted.named_parameters():
        if "lora_B" in name:
            parameter.data.normal_(0, 0.5)
    rank = next(m for m in adapted.modules() if hasattr(m, "r") and isinstance(m.r, dict)).r["default"]
    before, after = tower_matrices(plain), tower_matrices(adapted)
    settings = WeightSettings(top_k=10, epsilon=0.5, top_k_sweep=[5, 10], epsilon_sweep=[0.5], energy_share=0.9,
                              overlap_rank=8)
    drift, sweep, subspaces = weight_drift(before, after, 3, [], pretrained_bases(before), settings)
    adapted_rows = drift[drift["relative_drift"] > 0]
    assert set(adapted_rows["matrix"]) == {"q_proj", "v_proj"}  # the tiny LoRA's targets; the projection is untouched
    for key in zip(adapted_rows["layer"], adapted_rows["matrix"]):
        values = singular_values(after[key].double() - before[key].double())
        assert int((values > 1e-6 * values.max()).sum()) <= rank, key
    assert (adapted_rows["rank90"] <= rank).all() and (adapted_rows["effective_rank"] <= rank).all()
    assert all(subspaces[f"{layer}.{matrix}"].shape[1] <= rank for layer, matrix in zip(drift["layer"], drift["matrix"]))
    assert list(drift["state"].unique()) == ["final"] and (drift["epoch"] == 3).all()
    assert len(sweep) == len(drift) * 2


def test_kept_epochs_are_measured_one_at_a_time_after_the_checkpoint():
    from clipdrift.measure.settings import WeightSettings
    from clipdrift.measure.weight_drift import pretrained_bases, subspace_overlaps, weight_drift

    generator = torch.Generator().manual_seed(10)
    before = {(0, "q_proj"): torch.randn(12, 12, generator=generator),
              (-1, "proj"): torch.randn(8, 12, generator=generator)}
    after = {key: weight + 0.1 * torch.randn(weight.shape, generator=generator) for key, weight in before.items()}
    loaded = []
    epochs = [(e, lambda e=e: loaded.append(e) or {k: before[k] + e / 2 * (after[k] - before[k]) for k in before})
              for e in (1, 2)]
    settings = WeightSettings(top_k=3, epsilon=0.5, top_k_sweep=[3], epsilon_sweep=[0.5], energy_share=0.9,
                              overlap_rank=2)
    drift, _, spaces = weight_drift(before, after, 2, epochs, pretrained_bases(before), settings)
    assert loaded == [1, 2] and list(drift["state"]) == ["final"] * 2 + ["epoch"] * 4
    halfway = drift[(drift["state"] == "epoch") & (drift["epoch"] == 1)].set_index("matrix")["relative_drift"]
    final = drift[drift["state"] == "final"].set_index("matrix")["relative_drift"]
    assert (halfway / final).to_numpy() == pytest.approx([0.5, 0.5])
    run = {"dataset": "d", "method": "full", "lr": "1e-03"}
    pairs = subspace_overlaps([({**run, "seed": 1}, spaces), ({**run, "seed": 2}, spaces),
                               ({**run, "dataset": "other", "seed": 3}, spaces)])
    assert pairs["overlap"].tolist() == pytest.approx([1.0, 1.0]) and pairs["chance"].tolist() == [2 / 8, 2 / 12]


def test_the_overlap_summary_keeps_pairs_of_one_seed_apart_and_orders_each_pair_of_cells():
    import pandas as pd

    from clipdrift.analysis.weights import comparable_overlap, weight_overlap_table

    def pair(method_a, seed_a, method_b, seed_b, overlap):
        return {"dataset": "d", "method_a": method_a, "lr_a": "1e-03", "seed_a": seed_a, "method_b": method_b,
                "lr_b": "1e-03", "seed_b": seed_b, "layer": 0, "matrix": "q_proj", "rank": 2, "overlap": overlap,
                "chance": 0.25}

    rows = pd.DataFrame([pair("full", 1, "full", 2, 0.5), pair("lora", 2, "lora", 1, 0.7),
                         pair("full", 1, "lora", 1, 0.9), pair("lora", 2, "full", 1, 0.1),
                         pair("full", 2, "lora", 1, 0.3), pair("full", 2, "lora", 2, 0.8)])
    table = weight_overlap_table(rows).set_index(["kind", "seeds", "method_a", "method_b"])
    assert table.loc[("methods", "different", "full", "lora"), "overlap_mean"] == pytest.approx(0.2)
    assert table.loc[("methods", "same", "full", "lora"), "overlap_mean"] == pytest.approx(0.85)
    assert table.loc[("seeds", "different", "lora", "lora"), "n_pairs"] == 1
    assert set(comparable_overlap(table.reset_index())["seeds"]) == {"different"}
    one_seed = weight_overlap_table(rows[rows["seed_a"] == rows["seed_b"]])
    assert set(comparable_overlap(one_seed)["seeds"]) == {"same"} and set(one_seed["kind"]) == {"methods"}


def test_magnitude_is_per_output_unit_as_peft_s_dora_decomposes_a_linear():
    """DoRA's magnitude vector, as peft initialises it from the base weight, is the norm of each
    output unit's row: the norms ΔM compares."""
    import peft

    torch.manual_seed(11)
    model = peft.get_peft_model(torch.nn.Sequential(torch.nn.Linear(12, 7)),
                                peft.LoraConfig(r=2, target_modules=["0"], use_dora=True))
    layer = next(m for m in model.modules() if isinstance(m, peft.tuners.lora.LoraLayer))
    magnitude = layer.lora_magnitude_vector["default"].weight.detach()
    base = layer.get_base_layer().weight.detach()
    assert magnitude.shape == (7,) and torch.allclose(magnitude, base.norm(dim=1))
    changed = magnitude_direction(base, base * torch.linspace(1, 2, 7)[:, None])
    assert changed["delta_magnitude"] == pytest.approx(float((torch.linspace(0, 1, 7) * base.norm(dim=1)).mean()),
                                                       rel=1e-6)


def test_the_magnitude_direction_slope_of_a_run_is_the_least_squares_slope_over_its_query_matrices():
    import pandas as pd

    from clipdrift.analysis.weights import magnitude_direction_slopes

    def rows(seed, points, matrix="q_proj"):
        return [{"dataset": "d", "method": "full", "lr": "1e-03", "seed": seed, "state": "epoch", "epoch": epoch,
                 "layer": layer, "matrix": matrix, "delta_direction": d, "delta_magnitude": m}
                for epoch, (layer, d, m) in enumerate(points)]

    frame = pd.DataFrame(rows(1, [(0, 0.1, 1.2), (1, 0.2, 1.4), (0, 0.4, 1.8)])  # ΔM = 2 ΔD + 1
                         + rows(2, [(0, 0.1, 0.9), (1, 0.3, 0.7)])  # slope −1
                         + rows(2, [(0, 5.0, 0.0)], matrix="v_proj")  # another matrix: not a query matrix
                         + rows(3, [(0, 0.1, 0.5)]))  # one point: no slope
    slopes = magnitude_direction_slopes(frame).set_index("seed")["weight_dm_slope"]
    assert slopes[1] == pytest.approx(2.0) and slopes[2] == pytest.approx(-1.0) and math.isnan(slopes[3])
