"""What a job that scores weight states of a run reads (the curves and the intervention), the
files named by its rule's inputs (what they compute with, so inside their code digests): the
fine-tuning task's test split, the drift probe with the pretrained reference on it, and every
held-out task's images and text classifier, checked against the settings they were built with."""

from __future__ import annotations

from clipdrift.core.io import read_json, read_safetensors
from clipdrift.data.classnames import prompt_names
from clipdrift.data.split import read_image_split
from clipdrift.measure.curves import CurveInputs
from clipdrift.measure.extract import reference_from_tensors
from clipdrift.measure.settings import AttentionConfig
from clipdrift.measure.zeroshot import TextClassifier, pretrained_score


def scoring_inputs(smk, attention: AttentionConfig, eval_batch_size: int, zeroshot: dict) -> tuple[CurveInputs, dict]:
    """The job's :class:`CurveInputs` and the pretrained model's top-1 per held-out task, from
    the rule's ``test``, ``probe``, ``reference`` and suite inputs (``zeroshot``, ``manifests``,
    ``classifiers``, ``pretrained_zeroshot``, in the order of ``params.tasks``)."""
    suite, pretrained_zs = {}, {}
    for task, images, manifest, classifier, scored in zip(smk.params.tasks, smk.input.zeroshot, smk.input.manifests,
                                                          smk.input.classifiers, smk.input.pretrained_zeroshot):
        held_out = read_image_split(images)
        names = prompt_names(zeroshot[task], task, held_out.class_names, read_json(manifest)["source_class_names"])
        weights = TextClassifier.from_tensors(*read_safetensors(classifier)).require(
            task, zeroshot[task]["template_texts"], names)
        suite[task] = (held_out, weights)
        pretrained_zs[task] = pretrained_score(read_json(scored), task, zeroshot[task])
    first = zeroshot[smk.params.tasks[0]]  # batch size and amp are the study's, the same for every task
    inputs = CurveInputs(read_image_split(smk.input.test), read_image_split(smk.input.probe),
                         reference_from_tensors(*read_safetensors(smk.input.reference)), suite, attention,
                         eval_batch_size, first["batch_size"], first["amp"])
    return inputs, pretrained_zs
