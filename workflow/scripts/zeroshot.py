"""Zero-shot top-1/top-5/balanced accuracy on every task of the held-out suite: a run's checkpoint
(adapters active, its own projection) with the study's stored text classifiers, or (in-domain
reference) the pretrained model on a fine-tuning task's own test set. One record per task."""

from clipdrift.pipeline.jobs.warm.client import hand_over

hand_over(snakemake)  # noqa: F821 - the job server ran this job (and this process exits), or it runs here

from clipdrift.core.io import read_json, read_safetensors, write_json
from clipdrift.data.classnames import prompt_names
from clipdrift.data.split import read_image_split
from clipdrift.measure.zeroshot import TextClassifier, build_text_classifier, evaluate, score_record
from clipdrift.model.backbones import build_classifier
from clipdrift.model.checkpoints import load_backbone_spec, load_classifier
from clipdrift.model.openclip import open_clip
from clipdrift.pipeline.jobs.runner import run_script


def main(smk):
    spec = load_backbone_spec(smk.input.backbone)
    if "checkpoint" in smk.input.keys():
        model, _ = load_classifier(smk.input.checkpoint, base=spec)
        scored, tasks = smk.input.checkpoint, zip(smk.params.tasks, smk.input.zeroshot, smk.input.manifests,
                                                  smk.input.classifiers)
    else:  # the in-domain reference: the pretrained model with this task's own class names
        model, scored = build_classifier(spec, n_classes=1, seed=0), "the pretrained model"
        tasks = [(smk.params.tasks[0], smk.input.images, smk.input.manifest, None)]
    records = []
    for task, images, manifest, stored in tasks:
        settings, split = smk.params.settings[task], read_image_split(images)
        names = prompt_names(settings, task, split.class_names, read_json(manifest)["source_class_names"])
        if stored is not None:
            weights = TextClassifier.from_tensors(*read_safetensors(stored)).require(task, settings["template_texts"],
                                                                                     names)
        else:
            weights = build_text_classifier(model.clip, open_clip.get_tokenizer(spec.name), task, settings, names).weights
        scores = evaluate(model, weights, split, batch_size=settings["batch_size"], amp=settings["amp"], what=scored)
        records.append(score_record(smk.params.run, task, settings, smk.params.checkpoint, scores))
    write_json(smk.output.scores, {"tasks": records})


run_script(snakemake, main, uses_gpu=True)  # noqa: F821 - injected by Snakemake
