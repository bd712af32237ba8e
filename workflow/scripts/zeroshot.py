"""Zero-shot top-1/top-5/balanced accuracy of a run's checkpoint (adapters active) or of the
pretrained model, on the held-out task, with text features from the frozen text tower."""

import open_clip

from clipdrift.backbones import build_classifier
from clipdrift.checkpoints import load_backbone_spec, load_classifier
from clipdrift.classnames import class_names
from clipdrift.io import read_image_split, write_json
from clipdrift.jobs import run_script
from clipdrift.zeroshot import evaluate, load_templates, text_classifier


def main(smk):
    spec = load_backbone_spec(smk.input.backbone)
    split = read_image_split(smk.input.images)
    if "checkpoint" in smk.input.keys():
        model, _ = load_classifier(smk.input.checkpoint, base=spec)
    else:
        model = build_classifier(spec, n_classes=1, seed=0)  # the head plays no part in zero-shot
    settings = smk.params.settings
    templates = load_templates(settings["templates"])
    names = class_names(settings["class_names"], smk.params.task, split.class_names)
    weights = text_classifier(model.clip, open_clip.get_tokenizer(spec.name), names, templates, amp=settings["amp"])
    scored = smk.input.get("checkpoint", "the pretrained model")
    scores = evaluate(model, weights, split, batch_size=settings["batch_size"], amp=settings["amp"], what=scored)
    write_json(smk.output.scores, {**smk.params.run, "task": smk.params.task, "templates": settings["templates"],
                                   "n_templates": len(templates), "class_names": settings["class_names"],
                                   "checkpoint": smk.params.checkpoint, **scores})


run_script(snakemake, main, uses_gpu=True)  # noqa: F821 - injected by Snakemake
