"""The classifier: a CLIP-style image-text model with LoRA on the query and value projections of
every image and text block, and logits = the model's logit scale x cosine(image feature,
class-prompt feature) (+ its logit bias for SigLIP). No learned head: the class prompts are the
classifier, read through the (adapted) text tower.

One `Classifier` subclass per backbone, registered in BACKBONES under the `model_type` of the
model folder's config.json (never its name): `clip` (CLIPModel: OpenAI's ViT-B/16, ViT-L/14,
ViT-L/14-336) and `siglip` (SiglipModel: SigLIP and the fixed-resolution SigLIP 2 checkpoints).
What differs between backbones lives in their class; the image size comes from the vision config
and the normalisation from the model's own image processor, so a 336 px or 0.5/0.5 model needs no
code."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from datadream.components.loading.models import refuse_missing, explained_loading, missing_weights
from datadream.errors import UserError

# The same module names in CLIPModel and SiglipModel. SigLIP's attention-pooling head
# (vision_model.head) is outside encoder.layers and stays frozen, as in the published recipe.
LORA_TARGETS = r".*(text_model|vision_model)\.encoder\.layers\.\d+\.self_attn\.(q_proj|v_proj)"

Normalisation = tuple[tuple[float, ...], tuple[float, ...]]


@dataclass
class Classifier:
    """A backbone as the classifier uses it. `model` is the transformers model, or its peft
    wrapper once LoRA is on (add_lora, load_lora), whose attributes reach the model's own."""

    source: str  # the hub id or folder it was loaded from
    model: Any
    tokenizer: Any
    image_size: int
    normalisation: Normalisation  # (mean, std) of the model's own image processor

    family: ClassVar[str]  # config.json's model_type
    model_class: ClassVar[str]  # the transformers class that loads it

    def model_text(self, prompts: list[str]) -> list[str]:
        """The prompts as the text tower reads them (training, scoring and export alike)."""
        return list(prompts)

    def tokenize(self, prompts: list[str], device: torch.device | None = None) -> dict[str, torch.Tensor]:
        tokens = self._tokens(self.model_text(prompts))
        return {k: v.to(device) for k, v in tokens.items()} if device is not None else tokens

    def _tokens(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return dict(self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt"))

    def text_features(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.normalize(_projected(self.model.get_text_features(**tokens)).float(), dim=-1)

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(_projected(self.model.get_image_features(pixel_values=pixels)).float(), dim=-1)

    def logits(self, image_feats: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
        # The model's own (frozen) temperature: 100 for OpenAI's CLIP.
        return self.model.logit_scale.exp().float() * image_feats @ text_feats.t()

    def logit_terms(self) -> dict[str, float]:
        """The numbers `logits` adds to the cosines, for a user who scores without datadream."""
        return {"logit_scale": float(self.model.logit_scale.exp())}

    def add_lora(self, rank: int, alpha: float, dropout: float) -> None:
        """Wrap the model with trainable LoRA (everything else frozen)."""
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=LORA_TARGETS)
        self.model = get_peft_model(self.model, config)

    def load_lora(self, folder: Path) -> None:
        """Wrap the model with the LoRA saved in `folder` (a peft adapter folder)."""
        from peft import PeftModel

        self.model = PeftModel.from_pretrained(self.model, folder)

    def merge_lora(self) -> None:
        """The LoRA folded into the weights: a stock transformers model again."""
        self.model = self.model.merge_and_unload()

    def to(self, device: torch.device) -> Classifier:
        self.model.to(device)
        return self

    def save_preprocessing(self, folder: Path) -> None:
        """Our test transform (shorter side to image_size, bicubic, centre crop, the model's
        normalisation) and the tokenizer, as stock transformers reads them, so that stock
        preprocessing sees images as `predict` and `evaluate` do: for SigLIP too, whose own
        processor squashes the image to a square instead of cropping it. Saved side by side: no
        processor class pairs a CLIP image processor with any tokenizer but CLIP's."""
        _test_image_processor(self.image_size, self.normalisation).save_pretrained(folder)
        self._published_tokenizer().save_pretrained(folder)

    def _published_tokenizer(self):
        """The tokenizer as `source` has it: one that has tokenized keeps the padding and
        truncation of its last call (a fast tokenizer's backend does) and would save them."""
        from transformers import AutoTokenizer

        with explained_loading("CLIP", self.source, "classifier.model", "transformers"):
            return AutoTokenizer.from_pretrained(self.source)


class ClipClassifier(Classifier):
    family = "clip"
    model_class = "CLIPModel"

    def save_preprocessing(self, folder: Path) -> None:
        # One CLIPProcessor, which stock code loads with a single call.
        from transformers import CLIPProcessor

        image_processor = _test_image_processor(self.image_size, self.normalisation)
        CLIPProcessor(image_processor=image_processor, tokenizer=self._published_tokenizer()).save_pretrained(folder)


class SiglipClassifier(Classifier):
    family = "siglip"
    model_class = "SiglipModel"
    # The text tower pools the last position, so it only sees prompts as it was trained: padded
    # to the full 64 tokens (transformers' SigLIP documentation).
    text_length: ClassVar[int] = 64

    def model_text(self, prompts: list[str]) -> list[str]:
        # SigLIP 2 (a SigLIP model with Gemma's tokenizer) was trained on lower-cased text
        # (transformers' SigLIP 2 documentation): "Boeing 737" would reach it as text it never saw.
        if type(self.tokenizer).__name__.startswith("Gemma"):
            return [prompt.lower() for prompt in prompts]
        return list(prompts)

    def _tokens(self, texts: list[str]) -> dict[str, torch.Tensor]:
        # Trained without an attention mask over the padding: input_ids only.
        tokens = self.tokenizer(texts, padding="max_length", max_length=self.text_length, truncation=True,
                                return_tensors="pt")
        return {"input_ids": tokens["input_ids"]}

    def logits(self, image_feats: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
        # SigLIP was trained with a sigmoid per pair; we still train and score with a softmax
        # over the classes, where the shared bias changes nothing but keeps its logits its own.
        return super().logits(image_feats, text_feats) + self.model.logit_bias.float()

    def logit_terms(self) -> dict[str, float]:
        return {**super().logit_terms(), "logit_bias": float(self.model.logit_bias)}


BACKBONES: dict[str, type[Classifier]] = {cls.family: cls for cls in (ClipClassifier, SiglipClassifier)}


def _projected(output) -> torch.Tensor:
    # transformers 5 returns a model output whose pooler_output holds the projected features;
    # earlier versions return the tensor itself.
    return output.pooler_output if hasattr(output, "pooler_output") else output


def _test_image_processor(size: int, normalisation: Normalisation):
    from transformers import CLIPImageProcessor
    from transformers.image_utils import PILImageResampling

    mean, std = normalisation
    return CLIPImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}, resample=PILImageResampling.BICUBIC,
        image_mean=list(mean), image_std=list(std),
    )


def model_family(model: str) -> str:
    """`model_type` of the model's config.json, if it is one we support."""
    from transformers import PretrainedConfig

    with explained_loading("CLIP", model, "classifier.model", "transformers"):
        config, _ = PretrainedConfig.get_config_dict(model)
    family = config.get("model_type")
    if family not in BACKBONES:
        raise UserError(f"classifier.model: {model} is a {family!r} model; supported classifier model_types:"
                        f" {', '.join(BACKBONES)} (SigLIP 2 NaFlex, siglip2, is not supported)")
    return family


def check_classifier_weights(folder: Path) -> None:
    """A local transformers folder has the weights transformers would load."""
    from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME

    missing = missing_weights(folder, SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME)
    if missing and missing_weights(folder, WEIGHTS_NAME, WEIGHTS_INDEX_NAME):
        raise refuse_missing("classifier.model", folder, missing)


def check_classifier_reachable(classifier: str) -> None:
    """Read only the classifier's config and see that a local folder has its weights: an
    unsupported family, too, stops a run before the generator trains."""
    model_family(classifier)
    if Path(classifier).expanduser().is_dir():
        check_classifier_weights(Path(classifier).expanduser())


def image_normalisation(model: str) -> Normalisation:
    """(mean, std) of the model's own image processor (preprocessor_config.json)."""
    from transformers import AutoImageProcessor

    with explained_loading("CLIP", model, "classifier.model", "transformers"):
        processor = AutoImageProcessor.from_pretrained(model)
    return tuple(processor.image_mean), tuple(processor.image_std)


def load_pretrained(model: str) -> Classifier:
    """The backbone of `model` (a hub id or a local transformers folder), without LoRA."""
    import transformers
    from transformers import AutoTokenizer

    transformers.utils.logging.disable_progress_bar()
    local = Path(model)
    if (local.is_absolute() or local.exists()) and not (local / "config.json").is_file():
        raise UserError(f"classifier.model: {local} is not a transformers CLIP folder (no config.json)")
    backbone = BACKBONES[model_family(model)]
    if local.is_dir():
        check_classifier_weights(local)
    with explained_loading("CLIP", model, "classifier.model", "transformers"):
        loaded = getattr(transformers, backbone.model_class).from_pretrained(model)
        # AutoTokenizer fails loudly where CLIPTokenizer would return an empty tokenizer.
        tokenizer = AutoTokenizer.from_pretrained(model)
    return backbone(model, loaded, tokenizer, int(loaded.config.vision_config.image_size), image_normalisation(model))
