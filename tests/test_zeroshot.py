import open_clip
import pytest
import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer
from tiny_models import make_tiny

from clipdrift.data.classnames import template_texts
from clipdrift.data.split import ImageSplit
from clipdrift.measure.runtime import model_input
from clipdrift.measure.zeroshot import classification_scores, evaluate, text_classifier
from clipdrift.model.adapters import trainable_parameters
from clipdrift.model.backbones import CLIPClassifier

CLASSES = ["red circle", "blue square", "green triangle", "yellow star", "purple cross", "orange ring"]


@pytest.fixture(scope="module")
def tokenizer():
    return open_clip.get_tokenizer("clipdrift-tiny")


def make_split(n: int, n_classes: int = len(CLASSES), seed: int = 0) -> ImageSplit:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=generator, dtype=torch.uint8)
    return ImageSplit(images, torch.arange(n) % n_classes, CLASSES[:n_classes])


# ------------------------------------------------------------------ templates


def test_template_sets_ship_the_paper_prompt_and_clips_18_cifar_templates():
    assert template_texts("single") == ["a photo of a {}"]
    cifar = template_texts("cifar18")
    assert len(cifar) == len(set(cifar)) == 18
    assert cifar[0] == "a photo of a {}." and "a photo of the big {}." in cifar
    assert all(t.count("{}") == 1 for t in cifar)
    # CLIP's 18 CIFAR templates are CLIP_benchmark's CIFAR-100 set, word for word
    assert template_texts("benchmark", "cifar100") == cifar
    assert template_texts(["a sketch of a {}"]) == ["a sketch of a {}"]
    with pytest.raises(ValueError, match="template set 'imagenet80'.*cifar18"):
        template_texts("imagenet80")


def test_named_fields_and_slotless_templates_are_refused_with_the_fix(tokenizer):
    clip = make_tiny().clip
    with pytest.raises(ValueError, match=r"'a photo of a \{c\}'.*'\{\}'"):
        text_classifier(clip, tokenizer, CLASSES, ["a photo of a {c}"])
    with pytest.raises(ValueError, match="no '{}' slot"):
        text_classifier(clip, tokenizer, CLASSES, ["a photo"])


def test_text_classifier_is_the_normalised_template_mean_of_normalised_text_embeddings(tokenizer):
    clip = make_tiny().clip
    templates = ["a photo of a {}.", lambda c: f"itap of a {c}"]  # mixed strings and callables work
    weights = text_classifier(clip, tokenizer, CLASSES, templates)
    assert weights.shape == (64, len(CLASSES)) and weights.dtype == torch.float32
    with torch.no_grad():
        prompts = [[f"a photo of a {c}.", f"itap of a {c}"] for c in CLASSES]
        embedded = torch.stack([clip.encode_text(tokenizer(p), normalize=True).mean(0) for p in prompts])
    assert torch.allclose(weights, F.normalize(embedded, dim=-1).T, atol=1e-6)
    assert torch.equal(weights, text_classifier(clip, tokenizer, CLASSES, templates))  # deterministic


# ------------------------------------------------------------------ scores


def test_scores_from_ranked_predictions_by_hand():
    labels = torch.tensor([0, 0, 0, 1, 2, 2])
    ranked = torch.tensor([[0, 1, 2, 3, 4, 5],   # top-1 hit
                           [0, 2, 1, 3, 4, 5],   # top-1 hit
                           [1, 2, 3, 4, 0, 5],   # top-5 hit only
                           [0, 2, 3, 4, 5, 1],   # miss (rank 6)
                           [2, 0, 1, 3, 4, 5],   # top-1 hit
                           [1, 0, 3, 4, 5, 2]])  # miss
    scores = classification_scores(ranked, labels)
    assert scores["top1"] == pytest.approx(3 / 6)
    assert scores["top5"] == pytest.approx(4 / 6)
    # per-class recall: class 0 2/3, class 1 0/1, class 2 1/2
    assert scores["balanced_acc"] == pytest.approx((2 / 3 + 0 + 1 / 2) / 3)
    assert scores["n_images"] == 6


class TextEchoClassifier(CLIPClassifier):
    """A model whose image feature is (a positive multiple of) its class's text embedding.

    Image ``i`` is a flat grey level that encodes its label; the feature is looked up from it.
    """

    def __init__(self, clip, class_embeddings):
        super().__init__(clip, class_embeddings.shape[0])
        self.register_buffer("table", class_embeddings.clone())

    def image_features(self, images):
        cfg = self.clip.visual.preprocess_cfg
        level = (images[:, 0, 0, 0] * cfg["std"][0] + cfg["mean"][0]) * 255
        labels = torch.round(level / 10).long()
        return self.table[labels] * (1.0 + labels[:, None])  # scale must not matter: cosine


def test_image_features_equal_to_the_class_text_embeddings_score_100_percent(tokenizer):
    clip = make_tiny().clip
    weights = text_classifier(clip, tokenizer, CLASSES, template_texts("cifar18"))
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 5, 2, 0])
    images = (labels * 10).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 32, 32).contiguous()
    model = TextEchoClassifier(clip, weights.T)
    scores = evaluate(model, weights, ImageSplit(images, labels, CLASSES), batch_size=4)
    assert scores == {"top1": 1.0, "top5": 1.0, "balanced_acc": 1.0, "n_images": 9}


def test_mismatched_classifier_is_refused(tokenizer):
    model = make_tiny()
    weights = text_classifier(model.clip, tokenizer, CLASSES[:3], ["a photo of a {}"])
    with pytest.raises(ValueError, match="label 5 but the classifier has 3 classes"):
        evaluate(model, weights, make_split(6))
    with pytest.raises(ValueError, match=r"expected \(64, n_classes\)"):
        evaluate(model, weights.T, make_split(3, 3))


def test_images_of_another_size_are_refused_with_the_size_to_prepare(tokenizer):
    model = make_tiny()
    weights = text_classifier(model.clip, tokenizer, CLASSES, ["a photo of a {}"])
    split = make_split(6)
    small = ImageSplit(split.images[..., :24, :24].contiguous(), split.labels, CLASSES)
    with pytest.raises(ValueError, match=r"zero-shot images are \(24, 24\) but the model expects \(32, 32\): "
                                         r"prepare the data with image_size=32"):
        evaluate(model, weights, small)


def test_model_input_is_the_split_arithmetic_with_the_towers_mean_and_std():
    model = make_tiny()
    images = make_split(4).images
    mean, std = model.clip.visual.preprocess_cfg["mean"], model.clip.visual.preprocess_cfg["std"]
    by_hand = (images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(model_input(model, images), by_hand, rtol=0, atol=1e-6)


# ------------------------------------------------------------------ adapter-aware scoring


def set_adapters(model, enabled: bool):
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.enable_adapters(enabled)


def train_adapters_on_zeroshot_logits(model, weights, split, steps=40):
    """LoRA-only training (projection frozen) that teaches the adapters the zero-shot task."""
    optimiser = torch.optim.Adam(trainable_parameters(model), lr=3e-2)
    inputs = model_input(model, split.images)
    model.train()
    for _ in range(steps):
        optimiser.zero_grad()
        logits = 20 * F.normalize(model.image_features(inputs), dim=-1) @ weights
        F.cross_entropy(logits, split.labels).backward()
        optimiser.step()
    return model.eval()


def test_scoring_sees_the_adapters_after_training_and_equals_the_base_at_init(tokenizer):
    torch.manual_seed(0)
    base, lora = make_tiny("full", seed=6), make_tiny("lora", seed=6, train_projection=False)
    weights = text_classifier(base.clip, tokenizer, CLASSES, ["a photo of a {}"])
    split = make_split(24)
    base_scores = evaluate(base, weights, split, batch_size=10)
    assert evaluate(lora, weights, split, batch_size=7) == base_scores  # LoRA B = 0 at init

    train_adapters_on_zeroshot_logits(lora, weights, split)
    adapted = evaluate(lora, weights, split)
    assert adapted["top1"] >= 0.9 > base_scores["top1"] + 0.3
    assert adapted != base_scores
    set_adapters(lora, False)
    assert evaluate(lora, weights, split) == base_scores  # only the adapters made the difference
    set_adapters(lora, True)
    assert evaluate(lora, weights, split, batch_size=5) == adapted  # batching does not change results
    assert not lora.training


def test_text_side_is_the_frozen_pretrained_tower_after_full_fine_tuning(tokenizer):
    base, tuned = make_tiny("full", seed=8), make_tiny("full", seed=8)
    split = make_split(12)
    weights = text_classifier(base.clip, tokenizer, CLASSES, ["a photo of a {}"])
    optimiser = torch.optim.SGD(trainable_parameters(tuned), lr=0.5)
    tuned.train()
    F.cross_entropy(tuned(model_input(tuned, split.images)), split.labels % tuned.n_classes).backward()
    optimiser.step()
    assert not torch.equal(tuned.clip.visual.proj, base.clip.visual.proj)  # the image side moved
    assert torch.equal(text_classifier(tuned.clip, tokenizer, CLASSES, ["a photo of a {}"]), weights)


def test_non_finite_image_features_are_refused_naming_the_run(tokenizer):
    from clipdrift.measure.zeroshot import NonFiniteFeaturesError

    model = make_tiny("full", seed=2)
    weights = text_classifier(model.clip, tokenizer, CLASSES, ["a photo of a {}"])
    with torch.no_grad():
        model.clip.visual.proj.fill_(float("inf"))  # an overflowed tower: inf · 0 gives NaN features
    with pytest.raises(NonFiniteFeaturesError, match=r"runs/x/best.safetensors \(zero-shot images 0\.\.5\).*non-finite"):
        evaluate(model, weights, make_split(6), what="runs/x/best.safetensors")


def test_scoring_is_fp32_unless_amp_is_asked_for_and_never_on_the_cpu(tokenizer, monkeypatch):
    autocasts = []
    real = torch.autocast
    monkeypatch.setattr(torch, "autocast", lambda *a, **k: autocasts.append(a) or real(*a, **k))
    model = make_tiny("full", seed=2)
    weights = text_classifier(model.clip, tokenizer, CLASSES, ["a photo of a {}"], amp=True)
    scores = evaluate(model, weights, make_split(6), amp=True)
    assert autocasts == [] and 0 <= scores["top1"] <= 1  # the CPU path stays fp32, bitwise repeatable
