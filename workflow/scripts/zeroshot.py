"""Zero-shot top-1/top-5/balanced accuracy of a run's checkpoint (adapters active) or of the
pretrained model, on the held-out task, with text features from the frozen text tower."""

import open_clip

from clipdrift.backbones import build_classifier
from clipdrift.checkpoints import load_classifier
from clipdrift.io import read_image_split, write_json
from clipdrift.study import load_backbone_spec, run_script
from clipdrift.zeroshot import evaluate, load_templates, text_classifier


def main(smk):
    spec = load_backbone_spec(smk.input.backbone)
    split = read_image_split(smk.input.images)
    if "checkpoint" in smk.input.keys():
        model, _ = load_classifier(smk.input.checkpoint, base=spec)
    else:
        model = build_classifier(spec, n_classes=1, seed=0)  # the head plays no part in zero-shot
    templates = load_templates(smk.params.settings["templates"])
    weights = text_classifier(model.clip, open_clip.get_tokenizer(spec.name), split.class_names, templates)
    scores = evaluate(model, weights, split, batch_size=smk.params.settings["batch_size"])
    write_json(smk.output.scores, {**smk.params.run, "task": smk.params.task, "templates": smk.params.settings["templates"],
                                   "n_templates": len(templates), **scores})


run_script(snakemake, main)  # noqa: F821 - injected by Snakemake
