"""Config mistakes get one short message naming the key, the problem and the fix — for every
kind of schema violation the workflow's schema can raise (clipdrift.pipeline.config_errors.prepare_config)."""

import copy
import re

import pytest
import yaml
from snakemake.utils import update_config

from clipdrift.pipeline.config_errors import prepare_config, schema_problems
from clipdrift.pipeline.plan import StudyConfigError

from workflow_helpers import REPO

SCHEMA = REPO / "workflow/schemas/config.schema.yaml"


def _default_with(change: dict) -> dict:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    update_config(config, copy.deepcopy(change))
    return config


@pytest.mark.parametrize("change, message", [
    # additionalProperties: the closest known key is suggested
    ({"learning_rate": [1e-4]}, "config key 'learning_rate' is not a setting of this workflow: did you mean "
                                "'learning_rates'? known keys here: study, "),
    ({"training": {"batchsize": 8}}, "config key 'training.batchsize' is not a setting of this workflow: did you mean "
                                     "'training.batch_size'?"),
    ({"training": {"xyz": 8}}, "config key 'training.xyz' is not a setting of this workflow: known keys here: batch_size"),
    # required
    ({"datasets": [{"epochs": 3}]}, "config key datasets[0] lacks the required key 'name': add it (The task's name"),
    # enum
    ({"methods": ["full", "prefix-tuning"]},
     "config key methods[1] is 'prefix-tuning', which is not allowed: use one of full, lora, lp-ft, dora,"),
    # type, and a word YAML reads as a boolean
    ({"seeds": "seven"}, "config key seeds is 'seven' (a string) but must be a list (Run seeds"),
    ({"training": {"amp": False}}, "config key training.amp is False but must be one of 'auto', 'bf16', 'fp16', 'off' "
                                   "(quote words YAML reads as booleans)."),
    # a boolean as Snakemake's --config passes a lowercase word: a string
    ({"warm": "false"}, "config key warm is the string 'false': write False (--config warm=False)."),
    ({"warm": 0}, "config key warm is 0 (an integer) but must be true or false (Run local jobs through the warm"),
    # minimum, maximum, exclusive bounds
    ({"lora": {"r": 0}}, "config key lora.r is 0 but must be >= 1."),
    ({"lora": {"dropout": 2}}, "config key lora.dropout is 2 but must be <= 1."),
    ({"lora": {"alpha": 0}}, "config key lora.alpha is 0 but must be > 0."),
    ({"datasets": [{"name": "pets", "epochs": 1, "val_fraction": 1}]},
     "config key datasets[0].val_fraction is 1 but must be < 1."),
    # minItems, uniqueItems
    ({"seeds": []}, "config key seeds needs at least 1 item(s), got 0."),
    ({"methods": ["full", "full"]}, "config key methods lists the same value twice (['full', 'full'])"),
    # pattern
    ({"study": "my study"}, "config key study is 'my study', which is not of the form ^[A-Za-z0-9_.-]+$ (Name of the study"),
    # anyOf / oneOf: the specific reason inside the alternative, else the allowed forms
    ({"learning_rates": ["fast"]}, "config key learning_rates[0] is 'fast', which is not of the form"),
    ({"zeroshot": {"sizes": {"test": 0}}}, "config key zeroshot.sizes.test is 0 but must be >= 1."),
    ({"zeroshot": {"sizes": [5]}}, "config key zeroshot.sizes is [5], which is none of the allowed forms (Images of "
                                   "each held-out task's test split"),
    # near misses: a shape many would first write, answered with the right spelling
    ({"zeroshot": ["cifar100", "flowers102"]}, "config key zeroshot is a list (['cifar100', 'flowers102']): the held-out "
                                               "suite is zeroshot.tasks - write zeroshot: {tasks: [cifar100, flowers102]}."),
    ({"datasets": ["/data/Chest_XRay/"]}, "config key datasets[0] is the path '/data/Chest_XRay/': a dataset is a mapping "
                                          "with a name - write {name: chest_xray, root: /data/Chest_XRay/, epochs: 10}."),
    ({"datasets": ["eurosat"]}, "config key datasets[0] is 'eurosat': a dataset is a mapping - write "
                                "{name: eurosat, epochs: 10}."),
])
def test_every_kind_of_schema_violation_gets_a_short_message_with_the_key_and_the_fix(change, message, tmp_path):
    with pytest.raises(StudyConfigError) as refused:
        prepare_config(_default_with(change), SCHEMA, tmp_path)
    text = str(refused.value)
    assert text.startswith(message), text
    assert len(text.splitlines()) <= 3 and "workflow/schemas/config.schema.yaml" in text
    assert (tmp_path / "config-errors.log").read_text().count("Failed validating") >= 1  # the full detail


def test_the_schema_violation_kinds_above_are_every_kind_the_schema_uses():
    schema = yaml.safe_load(SCHEMA.read_text())
    used = set()

    def walk(node):
        if isinstance(node, dict):
            used.update(k for k in node if k in KEYWORDS)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    assert used <= {"additionalProperties", "required", "enum", "type", "minimum", "maximum", "exclusiveMinimum",
                    "exclusiveMaximum", "minItems", "uniqueItems", "pattern", "anyOf", "oneOf"}, used


KEYWORDS = {"additionalProperties", "required", "enum", "type", "minimum", "maximum", "exclusiveMinimum",
            "exclusiveMaximum", "minItems", "maxItems", "uniqueItems", "pattern", "anyOf", "oneOf", "allOf", "not",
            "const", "minLength", "maxLength", "multipleOf", "format", "dependentRequired", "if"}


def test_several_problems_are_counted_and_the_valid_default_study_has_none():
    assert schema_problems(_default_with({}), yaml.safe_load(SCHEMA.read_text())) == []
    with pytest.raises(StudyConfigError, match=r"\(and 1 more problem"):
        prepare_config(_default_with({"seeds": [], "lora": {"r": 0}}), SCHEMA)


def test_defaults_are_filled_and_cross_key_checks_run():
    config = prepare_config(_default_with({}), SCHEMA)
    assert config["training"]["eval_amp"] is False and config["zeroshot"]["class_names"] == "benchmark"
    with pytest.raises(StudyConfigError, match="world.image_size is 64 but backbone clipdrift-tiny expects 32"):
        prepare_config(_default_with({"world": {"image_size": 64}}), SCHEMA)


# --- method variants: names that are safe paths, errors that name the variant ---------------------

LORA_R4 = {"name": "lora-r4", "method": "lora", "lora": {"r": 4}}


@pytest.mark.parametrize("variant, message", [
    ({**LORA_R4, "lora": {"rank": 4}}, "variant 'lora-r4': config key 'methods[1].lora.rank' is not a setting of "
                                       "this workflow: known keys here: r, alpha, dropout, targets, train_projection."),
    ({**LORA_R4, "lora": {"r": 0}}, "variant 'lora-r4': config key methods[1].lora.r is 0 but must be >= 1."),
    ({**LORA_R4, "method": "prefix-tuning"}, "variant 'lora-r4': config key methods[1].method is 'prefix-tuning', "
                                             "which is not allowed: use one of full, lora, lp-ft, dora,"),
    ({"name": "full-wd", "method": "full", "training": {"weight_decay": -1}},
     "variant 'full-wd': config key methods[1].training.weight_decay is -1 but must be >= 0."),
    ({"name": "full-wd", "method": "full", "training": {"epochs": 3}},
     "variant 'full-wd': config key 'methods[1].training.epochs' is not a setting of this workflow"),
    ({"method": "lora"}, "config key methods[1] lacks the required key 'name': add it (The variant's name"),
    ({"name": "full-apr", "method": "full", "regulariser": {"kind": "kl", "weight": 0.1}},
     "variant 'full-apr': config key methods[1].regulariser.kind is 'kl', which is not allowed: use one of apr, "
     "entropy_floor."),
    ({"name": "full-apr", "method": "full", "regulariser": {"kind": "apr"}},
     "variant 'full-apr': config key methods[1].regulariser lacks the required key 'weight': add it (Its weight"),
    ({"name": "full-apr", "method": "full", "regulariser": {"kind": "apr", "weight": 0}},
     "variant 'full-apr': config key methods[1].regulariser.weight is 0 but must be > 0."),
    ({**LORA_R4, "name": "../lora"}, "variant '../lora': config key methods[1].name is '../lora', which is not of the "
                                     "form"),
    ({**LORA_R4, "name": "LoRA r4"}, "variant 'LoRA r4': config key methods[1].name is 'LoRA r4', which is not of "
                                     "the form"),
    ({**LORA_R4, "name": "<b>x</b>"}, "variant '<b>x</b>': config key methods[1].name is '<b>x</b>', which is not"),
])
def test_a_bad_variant_is_refused_naming_the_variant_and_the_key(variant, message, tmp_path):
    with pytest.raises(StudyConfigError) as refused:
        prepare_config(_default_with({"methods": ["full", variant]}), SCHEMA, tmp_path)
    assert str(refused.value).startswith(message), str(refused.value)


@pytest.mark.parametrize("methods, message", [
    (["full", LORA_R4, {**LORA_R4, "lora": {"r": 16}}], "methods: the name 'lora-r4' is used twice"),
    (["full", {"name": "full", "method": "lora"}], "methods: the name 'full' is used twice"),
    ([{"name": "lora", "method": "full", "freeze_blocks": 1}], "variant 'lora' of full takes the name of the method lora"),
    (["full", {"name": "r4", "method": "lora", "lora": {"r": 4}}],
     "variant 'r4' of lora must be named lora-<what it changes> (e.g. lora-r4): every table and figure groups"),
    (["full", {"name": "full-r4", "method": "lora", "lora": {"r": 4}}],
     "variant 'full-r4' of lora must be named lora-<what it changes> (e.g. lora-full-r4)"),
    (["full", {"name": "full-r4", "method": "full", "lora": {"r": 4}}],
     "variant 'full-r4' sets lora but its method is full: move the lora settings to a variant of one of the methods "
     "lora, dora, rslora, pissa, olora"),
    (["full", {**LORA_R4, "freeze_blocks": 2}],
     "variant 'lora-r4': freeze_blocks and freeze_embeddings are for the methods that train the tower (full, lp-ft, "
     "bitfit): LoRA already freezes"),
    (["full", {"name": "full-apr", "method": "full", "regulariser": {"kind": "apr", "weight": 1, "floor": 2}}],
     "variant 'full-apr' gives its apr regulariser floor: it is the entropy_floor regulariser's option; remove "
     "regulariser.floor"),
    (["full", {"name": "full-floor", "method": "full",
               "regulariser": {"kind": "entropy_floor", "weight": 1, "direction": "pretrained_first"}}],
     "variant 'full-floor' gives its entropy_floor regulariser direction: it is the apr regulariser's option"),
    (["full", {"name": "full-floor", "method": "full",
               "regulariser": {"kind": "entropy_floor", "weight": 1, "floor": 2.0, "ratio": 0.5}}],
     "gives its entropy floor both an absolute floor and a ratio of the pretrained entropy: keep one"),
    (["lora", {"name": "lora-frozen", "method": "lora", "freeze_embeddings": True}],
     "variant 'lora-frozen': freeze_blocks and freeze_embeddings are for the methods that train the tower (full, "
     "lp-ft, bitfit): LoRA already freezes every base weight (choose its blocks with lora.targets)"),
    (["full", {"name": "full-freeze6", "method": "full", "freeze_blocks": 6}],
     "variant 'full-freeze6' freezes 6 blocks but backbone clipdrift-tiny has 3: set freeze_blocks to at most 3"),
])
def test_variants_are_checked_across_keys(methods, message):
    with pytest.raises(StudyConfigError, match=re.escape(message)):
        prepare_config(_default_with({"methods": methods}), SCHEMA)


def test_lp_ft_without_epochs_after_its_probe_is_refused_at_parse_time_by_the_methods_own_rule():
    # the rule is MethodConfig.fits, which the fine-tune engine applies too (test_train)
    short = {"methods": ["full", "lp-ft"], "lp_ft": {"probe_epochs": 2},
             "datasets": [{"name": "world-eurosat", "epochs": 2}, {"name": "world-pets", "epochs": 3}]}
    with pytest.raises(StudyConfigError, match=r"lp_ft.probe_epochs is 2 but datasets \['world-eurosat'\] train only "
                                               "that many epochs or fewer: LP-FT needs epochs after the probe"):
        prepare_config(_default_with(short), SCHEMA)
    prepare_config(_default_with({**short, "lp_ft": {"probe_epochs": 1}}), SCHEMA)


def test_the_regularisers_own_rules_run_when_the_config_is_read(monkeypatch):
    from clipdrift.train import regulariser_config

    monkeypatch.setitem(regulariser_config.OPTIONS, "entropy_floor", {"hinge": ("row",), "layers": ("sum", "mean")})
    floor = {"name": "full-floor", "method": "full",
             "regulariser": {"kind": "entropy_floor", "weight": 1, "hinge": "layer_mean"}}
    with pytest.raises(StudyConfigError, match=re.escape("variant 'full-floor': hinge 'layer_mean' is unknown")):
        prepare_config(_default_with({"methods": ["full", floor]}), SCHEMA)


def test_a_variant_overrides_only_the_settings_it_names():
    from clipdrift.pipeline import plan

    variants = ["full", "lora", LORA_R4, {"name": "full-wd0.1", "method": "full", "training": {"weight_decay": 0.1}},
                {"name": "full-freeze2", "method": "full", "freeze_blocks": 2}]
    config = prepare_config(_default_with({"methods": variants, "lora": {"alpha": 32}}), SCHEMA)
    assert plan.method_names(config) == ["full", "lora", "lora-r4", "full-wd0.1", "full-freeze2"]
    assert config["methods"][2] == LORA_R4  # no defaults filled into a variant: it overrides what it names
    lora, r4 = plan.method_settings(config, "lora"), plan.method_settings(config, "lora-r4")
    assert r4 == {**lora, "lora_r": 4} and r4["lora_alpha"] == 32  # the study's alpha, the variant's rank
    # a plain method's settings are what they were before variants existed (no new key: no rerun)
    assert plan.method_settings(config, "full") == plan.method_settings(config, "full-wd0.1") == {"method": "full"}
    assert plan.method_settings(config, "full-freeze2") == {"method": "full", "freeze_blocks": 2}
    run = ("world-eurosat", "1e-04", 0)
    plain, decayed = plan.training_settings(config, *run, "full"), plan.training_settings(config, *run, "full-wd0.1")
    assert decayed == {**plain, "weight_decay": 0.1} and plain == plan.training_settings(config, *run)
    assert plan.base_method(config, "full-freeze2") == "full" and plan.base_method(config, "lora-r4") == "lora"
    assert "regulariser" not in plain


def test_a_regularised_variant_trains_with_its_regulariser():
    from clipdrift.pipeline import plan
    from clipdrift.train.config import TrainConfig
    from clipdrift.train.regulariser_config import RegulariserConfig

    variants = ["full", {"name": "full-apr-0.01", "method": "full", "regulariser": {"kind": "apr", "weight": 0.01}},
                {"name": "full-floor", "method": "full", "regulariser": {"kind": "entropy_floor", "weight": 0.1,
                                                                         "floor": 2.5}}]
    config = prepare_config(_default_with({"methods": variants}), SCHEMA)
    run = ("world-eurosat", "1e-04", 0)
    apr = TrainConfig(**plan.training_settings(config, *run, "full-apr-0.01"))
    floor = TrainConfig(**plan.training_settings(config, *run, "full-floor"))
    assert apr.regulariser == RegulariserConfig("apr", 0.01)
    assert floor.regulariser == RegulariserConfig("entropy_floor", 0.1, 2.5)
    assert plan.method_settings(config, "full-apr-0.01") == {"method": "full"}


# --- tasks: names that are safe paths, sources that are complete ----------------------------------

@pytest.mark.parametrize("name", ["../up", "a b", "<b>x</b>", "Chest", "a/b", "-lead", ""])
def test_task_names_that_are_not_safe_folder_names_are_refused_at_parse_time(name, tmp_path):
    for change in ({"datasets": [{"name": name, "epochs": 1, "source": "imagefolder", "root": "x"}]},
                   {"zeroshot": {"tasks": [{"name": name, "source": "imagefolder", "root": "x"}]}}):
        with pytest.raises(StudyConfigError, match="which is not of the form"):
            prepare_config(_default_with(change), SCHEMA, tmp_path)


@pytest.mark.parametrize("change, message", [
    ({"datasets": [{"name": "xray", "epochs": 1}]}, "datasets: 'xray' is neither a torchvision dataset of the list nor "
                                                    "a synthetic-world task: say where its images are"),
    ({"datasets": [{"name": "xray", "epochs": 1, "source": "imagefolder"}]}, "'xray' needs root: <folder>"),
    ({"datasets": [{"name": "dtd", "epochs": 1, "source": "torchvision", "root": "x"}]},
     "'dtd' sets root, which only source imagefolder reads"),
    ({"datasets": [{"name": "dtd", "epochs": 1, "classes": {"a": "b"}}]}, "'dtd' sets classes"),
    ({"datasets": [{"name": "world-x", "epochs": 1, "source": "world"}]}, "'world-x' is not a synthetic-world task"),
    ({"zeroshot": {"tasks": ["world-cifar100", "world-cifar100"]}}, "zeroshot.tasks: names must be unique"),
    ({"zeroshot": {"tasks": ["world-eurosat"]}}, "'world-eurosat' is also a fine-tuning dataset"),
    ({"zeroshot": {"tasks": [{"name": "flowers", "source": "imagefolder", "torchvision": "flowers102", "root": "x"}]}},
     "'flowers' sets torchvision but its source is imagefolder"),
    ({"zeroshot": {"tasks": ["world-patterns"], "class_names": "published"}}, "'published' exists only for"),
    ({"zeroshot": {"tasks": [{"name": "world-patterns", "class_names": ["a", " "]}]}}, "lists an empty class name"),
    ({"backbone": {"name": "ViT-B-16-SigLIP"}}, "backbone.name 'ViT-B-16-SigLIP' is not supported: its image tower is "
                                                "built by timm"),
    ({"backbone": {"name": "RN50"}}, "its image tower is a ResNet"),
    ({"backbone": {"name": "coca_ViT-B-32"}}, "pools with an attentional pooler"),
])
def test_inconsistent_task_and_backbone_settings_are_refused_with_the_fix(change, message, tmp_path):
    with pytest.raises(StudyConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        prepare_config(_default_with(change), SCHEMA, tmp_path)


def test_the_refused_backbones_message_lists_what_is_supported(tmp_path):
    with pytest.raises(StudyConfigError) as refused:
        prepare_config(_default_with({"backbone": {"name": "EVA02-B-16"}}), SCHEMA, tmp_path)
    assert "proven for open_clip ViT image towers that pool the CLS token - ViT-B-32, ViT-B-16" in str(refused.value)


def test_the_single_zeroshot_dataset_of_older_configs_is_named_with_its_replacement(tmp_path):
    config = _default_with({})
    config["zeroshot"] = {"dataset": "cifar100"}
    with pytest.raises(StudyConfigError, match=r"zeroshot.dataset is now zeroshot.tasks: write tasks: \[cifar100\]"):
        prepare_config(config, SCHEMA, tmp_path)


@pytest.mark.parametrize("zeroshot, message", [
    ({"sizes": {"train": 50, "test": 100}}, "zeroshot.sizes names ['test', 'train'], but a held-out task is only ever "
                                            "tested: give {test: N}"),
    ({"tasks": ["world-cifar100", {"name": "mine", "root": "/data/mine", "sizes": {"val": 10}}]},
     "zeroshot.tasks: 'mine': sizes names ['val'], but a held-out task is only ever tested"),
])
def test_held_out_sizes_other_than_test_are_refused_at_parse_time_naming_the_key(zeroshot, message):
    with pytest.raises(StudyConfigError) as refused:
        prepare_config(_default_with({"zeroshot": zeroshot}), SCHEMA)
    assert str(refused.value).startswith(message), str(refused.value)


# --- settings classes: their own rules run when the config is read ------------------------------------

@pytest.mark.parametrize("change, message", [
    ({"training": {"entropy_trace_every": 5, "entropy_trace_per_epoch": 5}},
     "training (dataset world-eurosat): give entropy_trace_every or entropy_trace_per_epoch, not both"),
])
def test_a_setting_its_class_refuses_is_refused_when_the_config_is_read(change, message):
    from clipdrift.pipeline import plan  # prepare_config runs its checks; called again, in case it stops doing so

    with pytest.raises(StudyConfigError, match=re.escape(message)):
        plan.check_study_config(prepare_config(_default_with(change), SCHEMA))


def test_every_job_is_told_settings_its_class_rebuilds_unchanged():
    """The dicts the rules carry are the settings classes' own: rebuilt, they write the same back."""
    from clipdrift.measure.settings import AttentionConfig, CKAConfig, CurveSettings, WeightSettings
    from clipdrift.pipeline import plan

    config = prepare_config(_default_with({"curves": {"enabled": True}}), SCHEMA)
    curves = plan.curve_settings(config, "world-eurosat")
    assert CurveSettings(**curves).to_dict() == curves
    weights = plan.weight_settings(config, "world-eurosat")
    assert WeightSettings(**weights).to_dict() == weights and weights["epochs"] == curves["epochs"] == [1, 2, 3, 4]
    attention = plan.attention_settings(config)
    assert AttentionConfig(**attention).to_dict() == attention
    cka = CKAConfig(**plan.cka_settings(config)).to_dict()
    assert cka == {**plan.cka_settings(config), "token": tuple(config["metrics"]["cka_token"]) if isinstance(
        config["metrics"]["cka_token"], list) else (config["metrics"]["cka_token"],), "variants": ("linear", "debiased")}


def test_every_method_section_of_the_registry_is_in_the_schema_and_a_variant_may_set_it():
    import yaml

    from clipdrift.model.methods import METHODS

    schema = yaml.safe_load(SCHEMA.read_text())
    sections = {entry.config_section for entry in METHODS.values() if entry.config_section}
    assert sections <= set(schema["properties"])
    adapters = {entry.config_section for entry in METHODS.values() if entry.adapter}
    assert adapters <= set(schema["definitions"]["variant"]["properties"])
    for entry in METHODS.values():  # each key a method's section holds sets a MethodConfig field
        if entry.config_section:
            assert set(schema["properties"][entry.config_section]["properties"]) == set(entry.settings_fields), entry.name


def test_a_peft_methods_variant_adds_its_options_to_the_studys_and_peft_judges_them_at_parse_time():
    from clipdrift.pipeline.plan import method_settings

    config = prepare_config(_default_with({"methods": ["full", "vera", {"name": "vera-r8", "method": "vera",
                                                                        "vera": {"options": {"r": 8}}}],
                                           "vera": {"options": {"d_initial": 0.2}}}), SCHEMA)
    assert method_settings(config, "vera-r8")["peft_options"] == {"d_initial": 0.2, "r": 8}
    assert method_settings(config, "vera")["peft_options"] == {"d_initial": 0.2}
    with pytest.raises(StudyConfigError, match=r"methods: method 'boft': BOFT: peft cannot put its adapters on targets "
                                               r"\['q_proj', 'v_proj'\]: in_features \(96\) must be divisible"):
        prepare_config(_default_with({"methods": ["full", "boft"], "boft": {"options": {"boft_block_size": 7}}}), SCHEMA)
    with pytest.raises(StudyConfigError, match=r"methods: method 'vera': VeRA: peft's VeraConfig has no option \['rank'\]"):
        prepare_config(_default_with({"methods": ["vera"], "vera": {"options": {"rank": 8}}}), SCHEMA)
    with pytest.raises(StudyConfigError, match=r"variant 'ia3-x' sets ia3.type, which method ia3 does not take"):
        prepare_config(_default_with({"methods": [{"name": "ia3-x", "method": "ia3", "ia3": {"type": "HRA"}}]}), SCHEMA)
    with pytest.raises(StudyConfigError, match="method 'peft' needs peft type"):
        prepare_config(_default_with({"methods": ["peft"]}), SCHEMA)
    with pytest.raises(StudyConfigError, match="variant 'dora-x' sets vera but its method is dora: move the vera "
                                               "settings to a variant of method vera"):
        prepare_config(_default_with({"methods": [{"name": "dora-x", "method": "dora", "vera": {"options": {}}}]}),
                       SCHEMA)
