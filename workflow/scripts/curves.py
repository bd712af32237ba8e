"""The curves of one run: its weight-interpolation points (alpha) and its kept epochs, each with
in-domain accuracy, held-out zero-shot top-1 and the entropy/ERF drift on the probe."""

from clipdrift.pipeline.jobs.warm.client import hand_over

hand_over(snakemake)  # noqa: F821 - the job server ran this job (and this process exits), or it runs here

from pathlib import Path

from clipdrift.core.io import read_json, read_safetensors, write_table
from clipdrift.data.classnames import prompt_names
from clipdrift.data.split import read_image_split
from clipdrift.measure.curves import CurveInputs, curve_table
from clipdrift.measure.extract import reference_from_tensors
from clipdrift.measure.settings import CurveSettings
from clipdrift.measure.tables import with_run_columns
from clipdrift.measure.zeroshot import TextClassifier, pretrained_score
from clipdrift.model.backbones import build_classifier
from clipdrift.model.checkpoints import kept_epoch_loaders, load_backbone_spec, load_classifier
from clipdrift.pipeline.jobs.runner import run_script


def main(smk):
    settings = CurveSettings(**smk.params.settings)
    zs = settings.zeroshot
    spec = load_backbone_spec(smk.input.backbone)
    finetuned, _ = load_classifier(smk.input.final, base=spec)
    pretrained = build_classifier(spec, finetuned.n_classes, seed=0)
    suite, pretrained_zs = {}, {}
    for task, images, manifest, classifier, scored in zip(smk.params.tasks, smk.input.zeroshot, smk.input.manifests,
                                                          smk.input.classifiers, smk.input.pretrained_zeroshot):
        held_out = read_image_split(images)
        names = prompt_names(zs[task], task, held_out.class_names, read_json(manifest)["source_class_names"])
        weights = TextClassifier.from_tensors(*read_safetensors(classifier)).require(task, zs[task]["template_texts"], names)
        suite[task] = (held_out, weights)
        pretrained_zs[task] = pretrained_score(read_json(scored), task, zs[task])
    first = zs[smk.params.tasks[0]]  # batch size and amp are the study's, the same for every task
    inputs = CurveInputs(read_image_split(smk.input.test), read_image_split(smk.input.probe),
                         reference_from_tensors(*read_safetensors(smk.input.reference)), suite,
                         settings.attention, settings.eval_batch_size, first["batch_size"],
                         first["amp"])
    epochs = kept_epoch_loaders(Path(smk.input.get("epochs", "")), list(settings.epochs), spec,
                                diverged=read_json(smk.input.history)["status"] == "diverged")
    table = curve_table(finetuned, pretrained, inputs, list(settings.alphas), epochs, pretrained_zs_top1=pretrained_zs)
    write_table(with_run_columns(table, smk.params.run), smk.output.table)


run_script(snakemake, main, uses_gpu=True)  # noqa: F821 - injected by Snakemake
