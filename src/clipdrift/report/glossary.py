"""What the report's words mean, in one section of the page that every column header of a
metric links to: the study's methods (from the method registry) and variants (what each sets,
against the value it replaces), every metric the report shows (from the metric registry), and
the terms and statistics below, which no registry owns."""

from __future__ import annotations

import re

from clipdrift.analysis.names import METRICS
from clipdrift.analysis.tables import method_label, method_order
from clipdrift.model.methods import METHODS, family_of

TERMS = {
    "selection split": "the split the best epoch is chosen on (validation by default); a run's best selection "
                       "accuracy is its accuracy there at that epoch",
    "CLS attention": "each head's attention from the CLS token to the image patches (CLS→CLS dropped, the row "
                     "renormalised); every attention statistic is measured on it, over a fixed probe subset",
    "ERF@0.95": "effective receptive field: the smallest fraction of patches that holds 95% of a head's CLS "
                "attention (smaller = more concentrated)",
    "CKA": "centred kernel alignment (linear) between the pretrained and the fine-tuned model's CLS hidden states "
           "over the probe images; 1 = the same representation up to rotation and scale",
    "retention": "a run's zero-shot top-1 on a held-out task divided by the pretrained model's on the same task "
                 "(100% = nothing lost)",
    "APR": "attention-preservation regulariser: the loss adds weight × the mean over layers of KL(current ‖ "
           "pretrained) between each head's CLS attention and the frozen pretrained tower's on the same batch",
    "entropy floor": "a regulariser adding weight × a hinge on every CLS-attention row whose entropy falls below "
                     "ratio (0.7 by default) × the pretrained layer's entropy, summed over layers",
    "weight decay": "AdamW's decoupled weight decay (the study's default 0.01)",
    "freeze_blocks": "the first that many transformer blocks of the image tower do not train",
    "collapse onset": "the fraction of training at which a run's traced layer-mean CLS-attention entropy first "
                      "falls 1% below the pretrained value",
    "intruder dimension": "a top left singular vector of a fine-tuned matrix whose largest absolute cosine with any "
                          "of the pretrained matrix's left singular vectors is below the threshold (Shuttleworth et "
                          "al. 2024: among the top 10, below 0.5): a direction the pretrained matrix did not have",
    "subspace overlap": "‖U_Aᵀ U_B‖²/r of two changes' top-r left singular directions: 1 = the same directions, "
                        "r/d expected of random ones; between two seeds of one cell it is the noise floor",
    "intruder intervention": "a run's weights with a share λ of their intruder components kept (1 = the run, 0 = "
                             "none left), against the control: each matrix's change shrunk uniformly to the same "
                             "distance from the pretrained weights; both scored like the run",
    "Welch's t-test": "a two-sample t-test of the difference of two methods' means over seeds, without assuming "
                      "equal variances; its 95% interval is of that difference",
    "permutation test": "the two-sided test of the mean difference over every relabelling of the seeds between "
                        "the two methods (exact where there are few enough, else sampled)",
    "Holm": "Holm's step-down correction of p-values for the many comparisons of one metric across the grid: "
            "controls the chance of any false positive among them at 5%",
    "Cohen's d": "the mean difference divided by the pooled SD: how many SDs apart two methods are",
    "bootstrap interval": "the 95% percentile interval of a cell's mean over seeds resampled with replacement; "
                          "with three to five seeds it is too narrow, read it with n",
}


def anchor(term: str) -> str:
    """The glossary entry's id on the page."""
    return "g-" + re.sub(r"[^a-z0-9]+", "-", term.lower()).strip("-")


def glossary_view(study: dict, methods) -> dict:
    """The glossary's groups of (anchor, term, meaning): the study's methods and variants, the
    metrics, then the terms."""
    ordered = method_order(methods)
    variants = study.get("variants") or {}
    plain = [(anchor(m), method_label(m), METHODS[m].description) for m in ordered if m in METHODS]
    changed = [(anchor(m), m, f"{method_label(variants[m]['method'] if m in variants else family_of(m))} with "
                + "; ".join(variants.get(m, {}).get("changes") or ["(what it sets is not recorded)"]))
               for m in ordered if m not in METHODS]
    metrics = [(anchor(metric.label), metric.label, f"{metric.words}: {metric.reads}") for metric in METRICS.values()]
    terms = [(anchor(term), term, meaning) for term, meaning in TERMS.items()]
    groups = [("Methods", plain), ("Variants", changed), ("Metrics", metrics), ("Terms and statistics", terms)]
    return {"groups": [(title, entries) for title, entries in groups if entries]}
