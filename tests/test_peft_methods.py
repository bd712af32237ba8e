"""Every method of the registry behaves as LoRA does: it trains what peft counts (and its formula
on ViT-B/32), its adapters compute what peft's merge_and_unload gives, its checkpoint holds only
what trains and reloads to the same outputs, it interpolates in merged-weight space, and a
stopped run resumes bit for bit with the CUDA precision branch (fp16 autocast, GradScaler)
pinned on the CPU. Parametrised over the registry: a new method is covered by adding it."""

import copy

import pytest
import torch
from tiny_models import TINY, registry_config

from clipdrift.model.adapters import (
    AdapterSettingsError,
    apply_method,
    checkpoint_keys,
    inject_adapters,
    peft_config,
    trainable_parameter_counts,
)
from clipdrift.model.backbones import BackboneSpec, build_classifier
from clipdrift.model.checkpoints import load_classifier, save_classifier
from clipdrift.model.interpolation import interpolated
from clipdrift.model.methods import METHODS, MethodConfig, method
from clipdrift.model.weights import tower_matrices
from clipdrift.train.engine import TrainingStopped, finetune
from clipdrift.train.resume import ResumeStore

from test_train import N_CLASSES, TRAIN, VAL, assert_same_states, config

ADAPTER_METHODS = [name for name, entry in METHODS.items() if entry.adapter]


def _trained(name: str, seed: int = 0):
    """A tiny classifier of method ``name`` whose trainable tensors were moved off their start
    (as training would), and the peft tuner that made its adapters (None without adapters)."""
    settings = registry_config(name)
    model = build_classifier(TINY, N_CLASSES, seed=seed)
    tuner = None
    if method(name).adapter:
        model.requires_grad_(False)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            tuner = inject_adapters(model, settings)
        model.clip.visual.proj.requires_grad_(settings.train_projection)  # as apply_method, which keeps no tuner
        model.head.requires_grad_(True)
        model.clipdrift_method = settings
    else:
        apply_method(model, settings, seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return model.eval(), tuner


@pytest.mark.parametrize("name", ADAPTER_METHODS)
def test_an_adapter_method_trains_exactly_the_parameters_peft_counts(name):
    import peft

    model = build_classifier(TINY, N_CLASSES, seed=0).requires_grad_(False)
    trainable, _ = peft.get_peft_model(model, peft_config(registry_config(name))).get_nb_trainable_parameters()
    counts = trainable_parameter_counts(apply_method(build_classifier(TINY, N_CLASSES, seed=0), registry_config(name)))
    assert counts["adapter"] == trainable > 0
    assert counts["image_tower"] == counts["text_tower"] == 0 and counts["head"] > 0


@pytest.mark.parametrize("name", list(METHODS))
def test_the_adapters_compute_what_peft_merge_and_unload_gives_and_the_weights_read_that_merge(name, tiny_images):
    model, tuner = _trained(name)
    with torch.no_grad():
        active = model(tiny_images)
    matrices = tower_matrices(model)
    merged = tuner.merge_and_unload() if tuner is not None else model
    with torch.no_grad():
        torch.testing.assert_close(merged(tiny_images), active, rtol=0, atol=2e-5)
    for key, weight in tower_matrices(merged).items():
        torch.testing.assert_close(matrices[key], weight, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", list(METHODS))
def test_a_checkpoint_holds_only_what_trains_and_reloads_to_the_same_outputs(name, tmp_path, tiny_images):
    model, _ = _trained(name, seed=3)
    settings = registry_config(name)
    save_classifier(tmp_path / "run.safetensors", model, TINY, settings, seed=3)
    loaded, _ = load_classifier(tmp_path / "run.safetensors", base=TINY)
    trained = {key for key, param in model.named_parameters() if param.requires_grad}
    held = set(checkpoint_keys(model, settings))
    assert trained <= held and (held == trained or method(name).trains_tower)
    with torch.no_grad():
        assert torch.equal(loaded(tiny_images), model(tiny_images))


@pytest.mark.parametrize("name", ADAPTER_METHODS + ["bitfit"])
@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_interpolation_is_in_merged_weight_space_for_every_method(name, alpha, tiny_images):
    """theta(alpha) = W0 + alpha (W_merged - W0): for LoRA that is scaling its adapters (kept
    exact here), for every other method the merged weights mixed with the pretrained ones."""
    model, tuner = _trained(name)
    pretrained = build_classifier(TINY, N_CLASSES, seed=0)
    plain = _merged_copy(model, tuner) if tuner is not None else copy.deepcopy(model)
    with torch.no_grad(), interpolated(plain, pretrained, alpha) as expected_model:
        expected = expected_model(tiny_images)
    with torch.no_grad(), interpolated(model, pretrained, alpha) as mixed:
        torch.testing.assert_close(mixed(tiny_images), expected, rtol=0, atol=2e-5)


def _merged_copy(model, tuner):
    """peft's merge_and_unload of a copy of ``model`` (a plain classifier, as Full FT's)."""
    saved = tuner.model
    try:
        tuner.model = copy.deepcopy(model)
        return tuner.merge_and_unload()
    finally:
        tuner.model = saved


@pytest.mark.parametrize("name", list(METHODS))
def test_a_stopped_run_resumes_bit_for_bit_on_the_cuda_precision_branch(name, tmp_path):
    """fp16 autocast with a GradScaler, what a pre-Ampere GPU runs, pinned on the CPU."""
    settings = registry_config(name)
    train = config(epochs=2, amp="fp16", cpu_autocast=True)

    def model():
        return apply_method(build_classifier(TINY, N_CLASSES, seed=0), settings, seed=1)

    whole = finetune(model(), TRAIN, VAL, train, progress=False, method=settings)
    store, asked = ResumeStore(tmp_path / "resume"), []
    with pytest.raises(TrainingStopped):
        finetune(model(), TRAIN, VAL, train, progress=False, method=settings, resume=store,
                 stop=lambda: asked.append(1) or len(asked) >= 4)
    resumed = finetune(model(), TRAIN, VAL, train, progress=False, method=settings, resume=store)
    assert resumed.history["resumed_at_step"] == 4
    assert_same_states(resumed.final_state, whole.final_state)
    assert any(not torch.equal(value, model().state_dict()[key]) for key, value in whole.final_state.items())


def test_peft_settings_it_refuses_are_named_with_the_fix():
    with pytest.raises(AdapterSettingsError, match=r"VeRA: peft's VeraConfig has no option \['rank'\]: use some of"):
        peft_config(MethodConfig("vera", peft_options={"rank": 4}))
    with pytest.raises(AdapterSettingsError, match="'Prefix' is not a peft tuner's config: use one of"):
        peft_config(MethodConfig("peft", peft_type="Prefix"))
    with pytest.raises(ValueError, match=r"options \['target_modules'\] are set by clipdrift"):
        MethodConfig("oft", peft_options={"target_modules": ["q_proj"]})
    with pytest.raises(ValueError, match="needs peft type"):
        MethodConfig("peft")
    model = build_classifier(TINY, N_CLASSES, seed=0)
    with pytest.raises(AdapterSettingsError, match=r"BOFT: peft cannot put its adapters on targets \['q_proj'\]: "
                                                   r"in_features \(96\) must be divisible by boft_block_size \(7\)"):
        apply_method(model, MethodConfig("boft", lora_targets=("q_proj",), peft_options={"boft_block_size": 7}))


def test_the_generic_method_takes_a_config_by_class_name_or_peft_type():
    import peft

    assert type(peft_config(MethodConfig("peft", peft_type="HRAConfig"))) is peft.HRAConfig
    assert type(peft_config(MethodConfig("peft", peft_type="hra"))) is peft.HRAConfig


def _vit_b32_formula(name: str) -> int:
    """Trainable adapter (BitFit: tower) parameters of each method on ViT-B/32 with its defaults:
    12 blocks, width 768, MLP 3072, q and v adapted (24 matrices of 768 x 768)."""
    from peft.tuners.lokr.layer import factorization

    d, matrices, r = 768, 24, 8
    out_l, out_k = factorization(d, -1)
    lokr_w2 = out_k * out_k if r >= out_k / 2 else 2 * out_k * r  # LoKr keeps w2 whole when r is that large
    per_matrix = {
        "lora": r * 2 * d, "rslora": r * 2 * d, "pissa": r * 2 * d, "olora": r * 2 * d,
        "dora": r * 2 * d + d,  # + a magnitude per output unit
        "vera": 256 + d,  # lambda_d (its r, 256) and lambda_b (one per output unit)
        "ia3": d,  # one scale per output unit
        "loha": 2 * r * 2 * d,  # two low-rank pairs
        "lokr": out_l * out_l + lokr_w2,  # the Kronecker factors of 768 = 24 x 32
        "oft": (d // 32) * (32 * 31 // 2),  # 24 blocks of 32, each a skew-symmetric 32 x 32
        "boft": (d // 4) * 4 * 4 + d,  # one butterfly factor of 192 blocks of 4 x 4, and a scale per output
        "peft": d * r,  # HRA: r Householder vectors of length 768
        "adalora": 12 * 2 * d + 12,  # init_r 12: A (12 x 768), B (768 x 12) and the 12 singular values E
    }
    if name == "bitfit":  # per block: q, k, v, out, two LayerNorms, the MLP's two; ln_pre, ln_post
        return 12 * (4 * d + 2 * d + 4 * d + d) + 2 * d
    return matrices * per_matrix[name]


@pytest.fixture(scope="module")
def vit_b32():
    return build_classifier(BackboneSpec("ViT-B-32-quickgelu"), 37, seed=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", ADAPTER_METHODS + ["bitfit"])
def test_on_vit_b32_each_method_trains_what_its_formula_says(name, vit_b32):
    counts = trainable_parameter_counts(apply_method(copy.deepcopy(vit_b32), registry_config(name)))
    assert counts["adapter" if method(name).adapter else "image_tower"] == _vit_b32_formula(name)


def test_adalora_s_rank_schedule_and_penalty_are_peft_s_own_on_the_same_model(monkeypatch, tiny_images):
    """Our schedule, stepped as peft's AdaLoraModel.update_and_allocate, masks the same ranks as
    peft's on a twin model fed the same gradients, through the budget and past its final step; our
    penalty equals what peft's forward adds to a loss."""
    import types

    from clipdrift.model.adalora import RankSchedule

    settings = MethodConfig("adalora", peft_options={"init_r": 6, "target_r": 2, "tinit": 1, "tfinal": 2, "deltaT": 1})
    ours, peft_model = (build_classifier(TINY, N_CLASSES, seed=0).requires_grad_(False) for _ in range(2))
    inject_adapters(ours, settings)
    tuner = inject_adapters(peft_model, settings)
    tuner.peft_config["default"].total_step = 8
    tuner.rankallocator.set_total_step(8)
    schedule = RankSchedule(ours, settings, total_steps=8)
    ours.load_state_dict(peft_model.state_dict())
    targets = torch.arange(tiny_images.shape[0]) % N_CLASSES
    for step in range(1, 10):
        for model in (ours, peft_model):
            model.zero_grad()
            torch.nn.functional.cross_entropy(model(tiny_images), targets).backward()
            with torch.no_grad():
                for param in model.parameters():
                    if param.grad is not None:
                        param.add_(-0.05 * param.grad)
        schedule.after_step(ours, step)
        tuner.update_and_allocate(step)
        assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), peft_model.state_dict().values()))
    assert schedule.settings.rank_pattern == tuner.peft_config["default"].rank_pattern
    assert sum(sum(pattern) for pattern in schedule.settings.rank_pattern.values()) == 2 * 6  # target_r x matrices
    monkeypatch.setattr(peft_model, "forward", lambda *args: types.SimpleNamespace(loss=torch.zeros(())))
    torch.testing.assert_close(schedule.penalty(ours), tuner.forward(tiny_images).loss)


def test_only_a_change_of_rank_at_most_r_is_refit_to_the_adapters_rank():
    """LoRA's and rsLoRA's change from the pretrained matrix has rank <= r; DoRA's (row magnitudes)
    and a PiSSA start's (the base rewritten) do not, so the intervention refits none of theirs."""
    from clipdrift.model.weights import lora_ranks

    assert set(lora_ranks(_trained("lora")[0]).values()) == set(lora_ranks(_trained("rslora")[0]).values()) == {8}
    assert lora_ranks(apply_method(build_classifier(TINY, N_CLASSES, seed=0), registry_config("dora"))) == {}
    assert lora_ranks(apply_method(build_classifier(TINY, N_CLASSES, seed=0), registry_config("pissa"))) == {}


def test_no_adapter_method_trains_a_base_bias_and_bitfit_keeps_a_frozen_embedding_stage_frozen():
    with pytest.raises(ValueError, match="options.bias 'all': an adapter method trains no base bias here"):
        MethodConfig("vera", peft_options={"bias": "all"})
    model = apply_method(build_classifier(TINY, N_CLASSES, seed=0), MethodConfig("bitfit", freeze_embeddings=True))
    training = {name for name, param in model.clip.visual.named_parameters() if param.requires_grad}
    assert "ln_pre.bias" not in training and "ln_post.bias" in training and "proj" in training
    assert all(name.endswith("bias") or name == "proj" for name in training)
