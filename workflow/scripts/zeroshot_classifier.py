"""The zero-shot text classifier of one held-out task, once per study (the text tower is frozen in
every method), and the pretrained model's zero-shot score with it."""

from clipdrift.pipeline.jobs.warm.client import hand_over

hand_over(snakemake)  # noqa: F821 - the job server ran this job (and this process exits), or it runs here

from clipdrift.core.io import read_json, write_json, write_safetensors
from clipdrift.data.classnames import prompt_names
from clipdrift.data.split import read_image_split
from clipdrift.measure.zeroshot import build_text_classifier, evaluate, score_record
from clipdrift.model.backbones import build_classifier
from clipdrift.model.checkpoints import load_backbone_spec
from clipdrift.model.openclip import open_clip
from clipdrift.pipeline.jobs.runner import run_script


def main(smk):
    settings, task = smk.params.settings, smk.params.task
    spec = load_backbone_spec(smk.input.backbone)
    pretrained = build_classifier(spec, n_classes=1, seed=0)  # the head plays no part in zero-shot
    split = read_image_split(smk.input.images)
    names = prompt_names(settings, task, split.class_names, read_json(smk.input.manifest)["source_class_names"])
    classifier = build_text_classifier(pretrained.clip, open_clip.get_tokenizer(spec.name), task, settings, names)
    write_safetensors(smk.output.classifier, *classifier.tensors())
    scores = evaluate(pretrained, classifier.weights, split, batch_size=settings["batch_size"], amp=settings["amp"],
                      what="the pretrained model")
    write_json(smk.output.pretrained, score_record(smk.params.run, task, settings, None, scores))


run_script(snakemake, main, uses_gpu=True)  # noqa: F821 - injected by Snakemake
