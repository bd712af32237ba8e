"""A fine-tune's history record: what ran, how it went, and the flags a reader should see."""

from __future__ import annotations

from clipdrift.model.adapters import trainable_parameter_counts
from clipdrift.train.resume import Progress

HISTORY_PARAM_GROUPS = ("adapter", "projection", "head", "image_tower", "total")


# A run whose GradScaler skipped more than this share of its steps is flagged: its loss scale
# collapsed (a healthy fp16 run skips a handful while the scale settles, then almost none).
SKIPPED_STEPS_FLAG = 0.05


def _flags(state: Progress) -> list[str]:
    if state.step and state.skipped_steps > SKIPPED_STEPS_FLAG * state.step:
        return [f"the fp16 loss scaler skipped {state.skipped_steps} of {state.step} steps "
                f"({100 * state.skipped_steps / state.step:.0f}%): the loss scale collapsed; fewer updates than planned"]
    return []


def run_history(run, state: Progress, final_select_acc: float, final_test_acc, best_test_acc) -> dict:
    """The history of the engine's ``run`` (its model, data, config, precision and trace) at ``state``."""
    counts = trainable_parameter_counts(run.model)
    train_time = sum(e["train_s"] for e in state.epochs)
    images = run.n_train * len(state.epochs)
    return {
        "status": "diverged" if state.diverged_at_step is not None else "completed",
        "n_train": run.n_train,
        "diverged_at_step": state.diverged_at_step,
        "selection_split": run.config.selection_split,
        "epochs": [dict(e) for e in state.epochs],
        "best_epoch": state.best_epoch,
        "best_select_acc": state.best_select_acc,
        "final_select_acc": final_select_acc,
        "final_test_acc": final_test_acc,
        "best_test_acc": best_test_acc,
        "trainable_params": {group: counts[group] for group in HISTORY_PARAM_GROUPS},
        "train_time_s": sum(e["time_s"] for e in state.epochs),
        "images_per_s": images / train_time if train_time > 0 else None,
        "steps": state.step,
        "skipped_steps": state.skipped_steps,
        "loss_scale": run.scaler.get_scale() if run.scaler.is_enabled() else None,
        "flags": _flags(state),
        "resumed_from_epoch": state.resumed_from_epoch,
        "resumed_at_step": state.resumed_at_step,
        "precision": run.precision.train,
        "eval_precision": run.precision.eval,
        "grad_scaler": run.precision.scaled,
        "device": str(run.device),
        **({"entropy_trace": {"every": run.trace.every, "images": len(run.trace.images), "pretrained": run.trace.pretrained,
                              "total_steps": run.total_steps}} if run.trace else {}),
    }
