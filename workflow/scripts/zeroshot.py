"""Zero-shot top-1/top-5/balanced accuracy on the held-out task: a run's checkpoint (adapters
active, its own projection) with the study's stored text classifier, or (in-domain reference)
the pretrained model on a fine-tuning task's own test set."""

from clipdrift.pipeline.jobs.warm.client import hand_over

hand_over(snakemake)  # noqa: F821 - the job server ran this job (and this process exits), or it runs here

from clipdrift.core.io import read_safetensors, write_json
from clipdrift.data.classnames import class_names
from clipdrift.data.split import read_image_split
from clipdrift.measure.zeroshot import TextClassifier, build_text_classifier, evaluate, score_record
from clipdrift.model.backbones import build_classifier
from clipdrift.model.checkpoints import load_backbone_spec, load_classifier
from clipdrift.model.openclip import open_clip
from clipdrift.pipeline.jobs.runner import run_script


def main(smk):
    settings, task = smk.params.settings, smk.params.task
    spec = load_backbone_spec(smk.input.backbone)
    split = read_image_split(smk.input.images)
    names = class_names(settings["class_names"], task, split.class_names)
    if "checkpoint" in smk.input.keys():
        model, _ = load_classifier(smk.input.checkpoint, base=spec)
        stored = TextClassifier.from_tensors(*read_safetensors(smk.input.classifier))
        weights, scored = stored.require(task, settings["templates"], names), smk.input.checkpoint
    else:  # the in-domain reference: the pretrained model with this task's own class names
        model = build_classifier(spec, n_classes=1, seed=0)
        weights = build_text_classifier(model.clip, open_clip.get_tokenizer(spec.name), task, settings["templates"],
                                        settings["class_names"], names, amp=settings["amp"]).weights
        scored = "the pretrained model"
    scores = evaluate(model, weights, split, batch_size=settings["batch_size"], amp=settings["amp"], what=scored)
    write_json(smk.output.scores, score_record(smk.params.run, task, settings, smk.params.checkpoint, scores))


run_script(snakemake, main, uses_gpu=True)  # noqa: F821 - injected by Snakemake
