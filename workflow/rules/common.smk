# Study plan derived from the validated config: canonical learning rates, the run grid, output
# paths, wildcard constraints, and source digests that tie rules to the package code they run.
import hashlib
import importlib.util
import re
from pathlib import Path

from clipdrift.study import canonical_lr, check_study_config

check_study_config(config)

STUDY = f"{config['results_dir']}/{config['study']}"
DATASETS = [d["name"] for d in config["datasets"]]
DATASET_CONFIG = {d["name"]: d for d in config["datasets"]}
METHODS = config["methods"]
LRS = [canonical_lr(lr) for lr in config["learning_rates"]]
SEEDS = [int(s) for s in config["seeds"]]
ZEROSHOT_DATASET = config["zeroshot"]["dataset"]
RUN = "{dataset}/{method}/lr{lr}/seed{seed}"
RUN_DIR = f"{STUDY}/runs/{RUN}"
LOGS = f"{STUDY}/logs"
BENCH = f"{STUDY}/benchmarks"
SCRATCH = f"{STUDY}/.resume"


wildcard_constraints:
    dataset="|".join(re.escape(d) for d in DATASETS + [ZEROSHOT_DATASET]),
    method="|".join(METHODS),
    lr="|".join(re.escape(lr) for lr in LRS),
    seed=r"\d+",


def expand_runs(pattern):
    """``pattern`` formatted for every (dataset, method, lr, seed) of the grid."""
    return expand(pattern, dataset=DATASETS, method=METHODS, lr=LRS, seed=SEEDS)


_PACKAGE_DIR = Path(importlib.util.find_spec("clipdrift").submodule_search_locations[0])


def code_digest(*patterns):
    """SHA-256 of the clipdrift source files matching ``patterns`` (relative globs).

    Snakemake does not see edits to modules a script imports; carrying this digest in
    ``params`` reruns exactly the rules whose code changed, and never a fine-tune for a metric.
    """
    digest = hashlib.sha256()
    for pattern in patterns:
        for path in sorted(_PACKAGE_DIR.glob(pattern)):
            digest.update(str(path.relative_to(_PACKAGE_DIR)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


# Which package code each stage runs (a module or a package folder of the same name).
def _module(name):
    return (f"{name}.py", f"{name}/**/*.py")


MODEL_CODE = ("backbones.py", "adapters.py", "checkpoints.py", "errors.py", "model_configs/*.json")
DATA_CODE = (*_module("data"), *_module("world"))
TRAIN_CODE = (*MODEL_CODE, *_module("train"), "data.py")
_METRICS_SHARED = ("metrics/__init__.py", "metrics/tables.py", "metrics/runtime.py")
ATTENTION_CODE = (*MODEL_CODE, *_METRICS_SHARED, "metrics/attention.py")
CKA_CODE = (*MODEL_CODE, *_METRICS_SHARED, "metrics/cka.py")
ZEROSHOT_CODE = (*MODEL_CODE, *_module("zeroshot"), "resources/*.json")
ANALYSIS_CODE = (*_module("analysis"), *_module("report"), "outputs.py", "resources/paper_*.csv")


# Settings each rule runs with, derived from the config (see clipdrift.study).
from clipdrift import study as _study


def data_settings(dataset):
    return _study.data_settings(config, dataset)


def method_settings(method):
    return _study.method_settings(config, method)


def training_settings(dataset, lr, seed):
    return _study.training_settings(config, dataset, lr, seed)


def attention_settings():
    return _study.attention_settings(config)


def cka_settings():
    return _study.cka_settings(config)


def zeroshot_settings(indomain=False):
    return _study.zeroshot_settings(config, indomain)


PROBE_SENSITIVITY = _study.probe_sensitivity_settings(config)


def run_checkpoint(which):
    """Input function: the run's ``which`` checkpoint (``best`` or ``final``)."""
    return lambda wildcards: f"{RUN_DIR}/{which}.safetensors".format(**wildcards)
