"""A run's settings against what it is given: the model and method it was set up with, and the
images and labels of its splits."""

from __future__ import annotations

from clipdrift.data.split import ImageSplit
from clipdrift.model.backbones import CLIPClassifier, check_image_size
from clipdrift.model.methods import MethodConfig
from clipdrift.train.config import TrainConfig, TrainConfigError


def check_method(model: CLIPClassifier, config: TrainConfig, method: MethodConfig | None) -> None:
    """Refuse a ``method`` that is not the one ``model`` was set up with, or an lp-ft run with no fine-tune epochs."""
    set_up = getattr(model, "clipdrift_method", None)
    if method is None:
        if set_up is not None and set_up.probes_first:
            raise TrainConfigError(
                "the model was set up for lp-ft (apply_method): pass method=<that MethodConfig> to finetune, "
                "which switches from the probe to the fine-tune phase; without it the run would be Full FT"
            )
        return
    if not isinstance(method, MethodConfig):
        raise TrainConfigError(f"method must be a clipdrift.model.adapters.MethodConfig, got {type(method).__name__}")
    if set_up is not None and set_up != method:
        raise TrainConfigError(
            f"the model was set up (apply_method) for {set_up} but finetune was given method={method}: "
            "pass the MethodConfig the model was set up with"
        )
    if not method.fits(config.epochs):
        raise TrainConfigError(
            f"lp-ft probes for lp_epochs={method.lp_epochs} epochs but the run has only epochs={config.epochs}: "
            "the run's epochs must exceed lp_epochs, so that fine-tuning follows the probe "
            f"(raise epochs above {method.lp_epochs} or lower lp_epochs below {config.epochs})"
        )


def check_inputs(model: CLIPClassifier, config: TrainConfig, splits: dict[str, ImageSplit | None]) -> None:
    """Refuse empty splits, images of another size than the model's and labels its head lacks."""
    for name, split in splits.items():
        if split is None:
            continue
        if len(split) == 0:
            raise TrainConfigError(
                f"the {name} split is empty" + (
                    f": selection_split is {config.selection_split!r}; give that split images "
                    "(e.g. a non-zero val size) or select on the other split" if name == "select" else "")
            )
        check_image_size(model.clip, split.images, name, TrainConfigError)
        top = int(split.labels.max())
        if int(split.labels.min()) < 0 or top >= model.n_classes:
            raise TrainConfigError(
                f"the {name} labels reach {top} but the model's head has {model.n_classes} classes: "
                "build the classifier with n_classes = the dataset's number of classes"
            )
