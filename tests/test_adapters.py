import pytest
import torch
import torch.nn.functional as F
from tiny_models import make_tiny

from clipdrift.model.adapters import (
    MethodConfig,
    apply_method,
    checkpoint_keys,
    set_lp_ft_phase,
    trainable_parameter_counts,
    trainable_parameters,
)
from clipdrift.model.backbones import BackboneSpec, build_classifier


def test_vit_b32_lora_parameter_counts_match_the_paper():
    model = apply_method(build_classifier(BackboneSpec("ViT-B-32-quickgelu"), 37, seed=0), MethodConfig("lora"))
    counts = trainable_parameter_counts(model)
    assert counts["adapter"] == 294_912  # 12 layers x (q, v) x r8 x (768 + 768)
    assert counts["projection"] == 393_216  # 768 x 512
    assert counts["head"] == 512 * 37 + 37
    assert counts["image_tower"] == counts["text_tower"] == 0


def test_full_ft_trains_the_image_tower_projection_and_head_only(tiny_spec):
    counts = trainable_parameter_counts(make_tiny("full"))
    assert counts["image_tower"] > 0 and counts["projection"] > 0 and counts["head"] > 0
    assert counts["text_tower"] == 0 and counts["adapter"] == 0


def test_lora_targets_only_image_tower_q_and_v():
    model = make_tiny("lora")
    adapted = {name.split(".lora_")[0] for name, _ in model.named_parameters() if "lora_" in name}
    assert adapted == {f"clip.visual.transformer.resblocks.{i}.attn.{p}" for i in range(3) for p in ("q_proj", "v_proj")}


def test_frozen_projection_switch():
    counts = trainable_parameter_counts(make_tiny("lora", train_projection=False))
    assert counts["projection"] == 0 and counts["adapter"] > 0


def test_bad_method_config_is_refused():
    with pytest.raises(ValueError, match="method 'prefix-tuning'"):
        MethodConfig("prefix-tuning")
    with pytest.raises(ValueError, match="targets"):
        MethodConfig("lora", lora_targets=("query",))


def test_lora_at_init_equals_the_pretrained_model(tiny_images):
    base, lora = make_tiny("full", seed=4), make_tiny("lora", seed=4)
    with torch.no_grad():
        assert torch.equal(lora.eval()(tiny_images), base.eval()(tiny_images))


def _train_steps(model, images, steps=3, lr=1e-2):
    optimiser = torch.optim.AdamW(trainable_parameters(model), lr=lr)
    targets = torch.arange(images.shape[0]) % model.n_classes
    model.train()
    for _ in range(steps):
        optimiser.zero_grad()
        F.cross_entropy(model(images), targets).backward()
        optimiser.step()
    return model.eval()


def _snapshot(model):
    return {name: param.detach().clone() for name, param in model.named_parameters()}


@pytest.mark.parametrize("method", ["full", "lora"])
def test_only_the_methods_parameters_change_and_never_the_text_tower(method, tiny_images):
    model = make_tiny(method)
    before = _snapshot(model)
    _train_steps(model, tiny_images)
    changed = {name for name, value in _snapshot(model).items() if not torch.equal(value, before[name])}
    assert not any(name.startswith("clip.") and not name.startswith("clip.visual.") for name in changed)
    assert "clip.visual.proj" in changed and "head.weight" in changed
    if method == "lora":
        assert changed <= {n for n in before if "lora_" in n} | {"clip.visual.proj", "head.weight", "head.bias"}
        assert any("lora_B" in name for name in changed)
    else:
        assert "clip.visual.transformer.resblocks.0.attn.q_proj.weight" in changed


def test_trained_lora_equals_a_hand_merged_model(tiny_images):
    lora = _train_steps(make_tiny("lora", seed=5, lora_r=4, lora_alpha=8), tiny_images)
    merged = make_tiny("full", seed=5)
    scale = 8 / 4
    state = lora.state_dict()
    with torch.no_grad():
        for i, block in enumerate(merged.clip.visual.transformer.resblocks):
            for proj in ("q_proj", "v_proj"):
                prefix = f"clip.visual.transformer.resblocks.{i}.attn.{proj}"
                delta = state[f"{prefix}.lora_B.default.weight"] @ state[f"{prefix}.lora_A.default.weight"]
                getattr(block.attn, proj).weight.copy_(state[f"{prefix}.base_layer.weight"] + scale * delta)
        merged.clip.visual.proj.copy_(lora.clip.visual.proj)
        merged.head.load_state_dict(lora.head.state_dict())
        assert torch.allclose(lora(tiny_images), merged(tiny_images), atol=1e-5)


def test_lora_initialisation_is_drawn_from_the_given_seed_without_touching_the_global_rng():
    state = torch.random.get_rng_state()
    a = apply_method(build_classifier(BackboneSpec("clipdrift-tiny"), 3, seed=0), MethodConfig("lora"), seed=1)
    b = apply_method(build_classifier(BackboneSpec("clipdrift-tiny"), 3, seed=0), MethodConfig("lora"), seed=1)
    c = apply_method(build_classifier(BackboneSpec("clipdrift-tiny"), 3, seed=0), MethodConfig("lora"), seed=2)
    assert torch.equal(torch.random.get_rng_state(), state)
    key = "clip.visual.transformer.resblocks.0.attn.q_proj.lora_A.default.weight"
    assert torch.equal(a.state_dict()[key], b.state_dict()[key])
    assert not torch.equal(a.state_dict()[key], c.state_dict()[key])


# ---- lp-ft: linear probe, then fine-tune --------------------------------------------------------


def test_lp_ft_config_is_validated_and_round_trips():
    with pytest.raises(ValueError, match="'lp-ft' needs lp_epochs"):
        MethodConfig("lp-ft")
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="lp_epochs must be an integer >= 1"):
            MethodConfig("lp-ft", lp_epochs=bad)
    with pytest.raises(ValueError, match="lp_train_projection must be true or false"):
        MethodConfig("lp-ft", lp_epochs=1, lp_train_projection=1)
    config = MethodConfig("lp-ft", lp_epochs=2, lp_train_projection=True)
    assert MethodConfig.from_dict(config.to_dict()) == config
    assert MethodConfig.from_dict({**config.to_dict(), "lora_targets": ["q_proj", "v_proj"]}) == config  # JSON lists
    # a dict written before the lp-ft fields existed: their defaults
    old = {k: v for k, v in MethodConfig("full").to_dict().items() if not k.startswith("lp_")}
    assert MethodConfig.from_dict(old) == MethodConfig("full")
    assert (config.phase(1), config.phase(2), config.phase(3)) == ("probe", "probe", "finetune")
    assert MethodConfig("full").phase(1) is None


@pytest.mark.parametrize("with_projection", [False, True])
def test_lp_ft_is_set_up_as_full_ft_and_its_phases_switch_what_trains(with_projection):
    config = MethodConfig("lp-ft", lp_epochs=1, lp_train_projection=with_projection)
    model = make_tiny("lp-ft", lp_epochs=1, lp_train_projection=with_projection)
    full = make_tiny("full")
    assert trainable_parameter_counts(model) == trainable_parameter_counts(full)
    assert model.clipdrift_method == config
    set_lp_ft_phase(model, config, probing=True)
    probing = trainable_parameter_counts(model)
    assert probing["head"] == trainable_parameter_counts(full)["head"] > 0
    assert probing["projection"] == (trainable_parameter_counts(full)["projection"] if with_projection else 0)
    assert probing["image_tower"] == probing["text_tower"] == probing["adapter"] == 0
    set_lp_ft_phase(model, config, probing=False)
    assert trainable_parameter_counts(model) == trainable_parameter_counts(full)
    with pytest.raises(ValueError, match=r"for a method with a probe phase \(lp-ft\), not 'full'"):
        set_lp_ft_phase(full, MethodConfig("full"), probing=True)


def test_lp_ft_checkpoints_hold_what_full_ft_checkpoints_hold():
    config = MethodConfig("lp-ft", lp_epochs=1)
    model = make_tiny("lp-ft", lp_epochs=1)
    assert checkpoint_keys(model, config) == checkpoint_keys(make_tiny("full"), MethodConfig("full"))
    set_lp_ft_phase(model, config, probing=True)  # the phase does not change what a checkpoint holds
    assert checkpoint_keys(model, config) == checkpoint_keys(make_tiny("full"), MethodConfig("full"))


def test_lp_ft_probe_phase_moves_only_the_head(tiny_images):
    config = MethodConfig("lp-ft", lp_epochs=1)
    model = make_tiny("lp-ft", lp_epochs=1)
    optimiser_params = trainable_parameters(model)  # built over the fine-tune phase's parameters
    before = _snapshot(model)
    set_lp_ft_phase(model, config, probing=True)
    optimiser = torch.optim.AdamW(optimiser_params, lr=1e-2, weight_decay=0.1)
    targets = torch.arange(tiny_images.shape[0]) % model.n_classes
    for _ in range(3):
        optimiser.zero_grad(set_to_none=True)
        F.cross_entropy(model(tiny_images), targets).backward()
        optimiser.step()
    changed = {name for name, value in _snapshot(model).items() if not torch.equal(value, before[name])}
    assert changed == {"head.weight", "head.bias"}  # no update, no weight decay of the frozen encoder
    assert len(optimiser.state) == 2


def test_a_method_that_would_train_the_text_tower_is_refused():
    from clipdrift.model.adapters import require_frozen_text_tower

    model = make_tiny("full")
    assert require_frozen_text_tower(model) is model
    model.clip.token_embedding.requires_grad_(True)
    with pytest.raises(RuntimeError, match="the text tower must stay frozen in every method"):
        require_frozen_text_tower(model)


# ------------------------------------------------------------------ the ablation knobs


VIT_B32_BLOCK = 4 * 768 * 768 + 4 * 768 + 2 * 768 * 3072 + 3072 + 768 + 4 * 768  # attention, MLP, 2 layer norms
VIT_B32_EMBEDDING = 768 * 3 * 32 * 32 + 768 + 50 * 768 + 2 * 768  # conv1 (no bias), class, positions, ln_pre


@pytest.mark.parametrize("frozen", [3, 6, 9])
@pytest.mark.parametrize("embeddings", [False, True])
def test_vit_b32_freeze_blocks_freezes_the_first_blocks_and_the_embedding_stage_only_when_asked(frozen, embeddings):
    # published: requires_grad False on encoder layers 0..k-1 only; the embedding stage trains
    full = trainable_parameter_counts(
        apply_method(build_classifier(BackboneSpec("ViT-B-32-quickgelu"), 37, seed=0), MethodConfig("full")))
    model = apply_method(build_classifier(BackboneSpec("ViT-B-32-quickgelu"), 37, seed=0),
                         MethodConfig("full", freeze_blocks=frozen, freeze_embeddings=embeddings))
    counts = trainable_parameter_counts(model)
    assert full["image_tower"] == VIT_B32_EMBEDDING + 12 * VIT_B32_BLOCK + 2 * 768  # + ln_post
    assert full["image_tower"] - counts["image_tower"] == frozen * VIT_B32_BLOCK + embeddings * VIT_B32_EMBEDDING
    assert counts["projection"] == full["projection"] == 393_216 and counts["head"] == full["head"]
    blocks = model.clip.visual.transformer.resblocks
    assert not any(p.requires_grad for block in blocks[:frozen] for p in block.parameters())
    assert all(p.requires_grad for block in blocks[frozen:] for p in block.parameters())
    visual = model.clip.visual
    embedding = [visual.conv1.weight, visual.class_embedding, visual.positional_embedding, visual.ln_pre.weight]
    assert all(p.requires_grad != embeddings for p in embedding) and visual.ln_post.weight.requires_grad


def test_frozen_blocks_stay_frozen_through_both_lp_ft_phases_and_never_change(tiny_images):
    config = MethodConfig("lp-ft", lp_epochs=1, freeze_blocks=2)
    model = make_tiny("lp-ft", lp_epochs=1, freeze_blocks=2)
    frozen = {name: p.detach().clone() for name, p in model.named_parameters()
              if name.startswith(("clip.visual.transformer.resblocks.0.", "clip.visual.transformer.resblocks.1."))}
    set_lp_ft_phase(model, config, probing=False)
    assert trainable_parameter_counts(model) == trainable_parameter_counts(make_tiny("full", freeze_blocks=2))
    _train_steps(model, tiny_images)
    assert all(torch.equal(p, dict(model.named_parameters())[name]) for name, p in frozen.items())
    moved = model.clip.visual.transformer.resblocks[2].attn.q_proj.weight
    assert not torch.equal(moved, make_tiny("full").clip.visual.transformer.resblocks[2].attn.q_proj.weight)


def test_freeze_blocks_is_refused_for_lora_and_beyond_the_tower():
    with pytest.raises(ValueError, match="LoRA already freezes every base weight"):
        MethodConfig("lora", freeze_blocks=3)
    with pytest.raises(ValueError, match="LoRA already freezes every base weight"):
        MethodConfig("lora", freeze_embeddings=True)
    with pytest.raises(ValueError, match="freeze_blocks must be an integer >= 0"):
        MethodConfig("full", freeze_blocks=-1)
    with pytest.raises(ValueError, match="freeze_blocks is 4 but the image tower has 3 blocks"):
        make_tiny("full", freeze_blocks=4)


@pytest.mark.parametrize("rank, targets", [(4, ("q_proj", "v_proj")), (16, ("q_proj", "v_proj")),
                                           (8, ("q_proj", "k_proj", "v_proj", "out_proj"))])
def test_vit_b32_lora_rank_and_targets_set_the_adapter_size(rank, targets):
    model = apply_method(build_classifier(BackboneSpec("ViT-B-32-quickgelu"), 37, seed=0),
                         MethodConfig("lora", lora_r=rank, lora_alpha=2 * rank, lora_targets=targets))
    assert trainable_parameter_counts(model)["adapter"] == 12 * len(targets) * rank * (768 + 768)


def test_a_method_config_written_before_freezing_existed_reads_as_no_freezing():
    old = {k: v for k, v in MethodConfig("full").to_dict().items() if k != "freeze_blocks"}
    assert MethodConfig.from_dict(old) == MethodConfig("full")
    assert MethodConfig.from_dict(MethodConfig("full", freeze_blocks=6).to_dict()).freeze_blocks == 6


def test_the_config_knows_exactly_the_methods_the_registry_holds_and_the_schema_file_lists_none():
    import yaml

    from clipdrift.model.methods import METHODS
    from clipdrift.pipeline.config_errors import with_method_names

    from workflow_helpers import REPO

    text = (REPO / "workflow/schemas/config.schema.yaml").read_text()
    assert "enum: [full" not in text  # the registry is the list; the schema is given it when a config is read
    schema = with_method_names(yaml.safe_load(text))
    plain, _ = schema["properties"]["methods"]["items"]["anyOf"]
    assert plain["enum"] == schema["definitions"]["variant"]["properties"]["method"]["enum"] == list(METHODS)


def test_a_method_added_to_the_registry_alone_is_accepted_planned_set_up_and_coloured(monkeypatch):
    """Adding a method of a kind the code knows is adding its entry: the config accepts it, the
    plan gives its settings, apply_method sets it up, its checkpoint holds what the entry says,
    and the figures colour it; an entry of an adapter kind apply_method does not know is refused."""
    from clipdrift.model import methods
    from clipdrift.model.adapters import checkpoint_keys
    from clipdrift.pipeline import plan
    from clipdrift.pipeline.config_errors import prepare_config
    from clipdrift.report.plotting import method_styles

    from test_config_errors import SCHEMA, _default_with

    tower = methods.Method("full-again", "Full FT again", "#123456", ("image_tower", "projection", "head"))
    monkeypatch.setitem(methods.METHODS, tower.name, tower)
    config = prepare_config(_default_with({"methods": ["full", "full-again"]}), SCHEMA)
    assert plan.method_names(config) == ["full", "full-again"]
    assert plan.method_settings(config, "full-again") == {"method": "full-again"}
    model = make_tiny("full-again")
    assert trainable_parameter_counts(model) == trainable_parameter_counts(make_tiny("full"))
    assert checkpoint_keys(model, MethodConfig("full-again")) == checkpoint_keys(make_tiny("full"), MethodConfig("full"))
    assert method_styles(["full", "full-again"])["full-again"].color == "#123456"
    unknown = methods.Method("dora-ish", "DoRA-ish", "#654321", ("adapter", "head"), adapter="dora")
    monkeypatch.setitem(methods.METHODS, unknown.name, unknown)
    with pytest.raises(ValueError, match="'dora' is not a peft tuner's config: use one of .*'LoraConfig'"):
        make_tiny("dora-ish")


def test_the_registry_is_the_one_list_of_method_names_in_the_package():
    """No module but the registry writes two or more method names together in a literal (a list,
    a tuple, a set or a dict's keys): every other place asks the registry."""
    import ast

    from clipdrift.model.methods import METHODS

    from test_layers import MODULES

    def names_in(node) -> set:
        items = node.keys if isinstance(node, ast.Dict) else getattr(node, "elts", [])
        return {item.value for item in items if isinstance(item, ast.Constant) and item.value in METHODS}

    found = []
    for module, path in MODULES.items():
        if module == "clipdrift.model.methods":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.List, ast.Tuple, ast.Set, ast.Dict)) and len(names_in(node)) >= 2:
                found.append(f"{module}:{node.lineno} {sorted(names_in(node))}")
    assert not found, f"method names listed outside clipdrift.model.methods: {found}"


def test_a_second_list_of_method_names_would_be_found():
    import ast

    tree = ast.parse('COLOURS = {"full": "#D55E00", "lora": "#0072B2"}')
    [node] = [node for node in ast.walk(tree) if isinstance(node, ast.Dict)]
    assert {key.value for key in node.keys} == {"full", "lora"}  # the shape the test above looks for
