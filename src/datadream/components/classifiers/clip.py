"""The CLIP-style classifier: LoRA on the query and value projections of every image and text
block, and logits = the model's logit scale x cosine(image feature, class-prompt feature) (+ its
logit bias for SigLIP). No learned head: the class prompts are the classifier, read through the
(adapted) text tower.

The family comes from the model folder's config.json `model_type`, never from its name: `clip`
(CLIPModel: OpenAI's ViT-B/16, ViT-L/14, ViT-L/14-336) and `siglip` (SiglipModel: SigLIP and the
fixed-resolution SigLIP 2 checkpoints). Image size comes from the vision config and the
normalisation from the model's own image processor, so a 336 px or 0.5/0.5 model needs no code."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from datadream.components.loading.models import refuse_missing, explained_loading, missing_weights
from datadream.errors import UserError

# The same module names in CLIPModel and SiglipModel. SigLIP's attention-pooling head
# (vision_model.head) is outside encoder.layers and stays frozen, as in the published recipe.
LORA_TARGETS = r".*(text_model|vision_model)\.encoder\.layers\.\d+\.self_attn\.(q_proj|v_proj)"
FAMILIES = ("clip", "siglip")
# SigLIP's text tower pools the last position, so it only sees prompts as it was trained:
# padded to the full 64 tokens (transformers' SigLIP documentation).
SIGLIP_TEXT_LENGTH = 64


def model_family(model: str) -> str:
    """`model_type` of the model's config.json, if it is one we support."""
    from transformers import PretrainedConfig

    with explained_loading("CLIP", model, "classifier.model", "transformers"):
        config, _ = PretrainedConfig.get_config_dict(model)
    family = config.get("model_type")
    if family not in FAMILIES:
        raise UserError(f"classifier.model: {model} is a {family!r} model; supported classifier model_types:"
                        f" {', '.join(FAMILIES)} (SigLIP 2 NaFlex, siglip2, is not supported)")
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


def image_normalisation(model: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of the model's own image processor (preprocessor_config.json)."""
    from transformers import AutoImageProcessor

    with explained_loading("CLIP", model, "classifier.model", "transformers"):
        processor = AutoImageProcessor.from_pretrained(model)
    return tuple(processor.image_mean), tuple(processor.image_std)


def load_clip(model: str):
    """(CLIPModel or SiglipModel, tokenizer) from a hub id or a local transformers folder. The
    model carries its image normalisation (see `normalisation`)."""
    import transformers
    from transformers import AutoTokenizer, CLIPModel, SiglipModel

    transformers.utils.logging.disable_progress_bar()
    local = Path(model)
    if (local.is_absolute() or local.exists()) and not (local / "config.json").is_file():
        raise UserError(f"classifier.model: {local} is not a transformers CLIP folder (no config.json)")
    family = model_family(model)
    if local.is_dir():
        check_classifier_weights(local)
    with explained_loading("CLIP", model, "classifier.model", "transformers"):
        clip = {"clip": CLIPModel, "siglip": SiglipModel}[family].from_pretrained(model)
        # AutoTokenizer fails loudly where CLIPTokenizer would return an empty tokenizer.
        tokenizer = AutoTokenizer.from_pretrained(model)
    # Kept on the module so every holder of the model (peft wrapper, merged copy) normalises
    # images as the model was trained, without passing the processor along.
    clip.datadream_normalisation = image_normalisation(model)
    return clip, tokenizer


def normalisation(clip) -> tuple[tuple[float, ...], tuple[float, ...]]:
    return clip.datadream_normalisation


def add_lora(clip, rank: int, alpha: float, dropout: float):
    """Wrap CLIP with trainable LoRA (everything else frozen); returns the peft model."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=LORA_TARGETS)
    return get_peft_model(clip, config)


def load_lora(clip, folder: Path):
    from peft import PeftModel

    return PeftModel.from_pretrained(clip, folder)


def model_text(clip, tokenizer, prompts: list[str]) -> list[str]:
    """The prompts as the text tower reads them. SigLIP 2 (a SigLIP model with Gemma's tokenizer)
    was trained on lower-cased text (transformers' SigLIP 2 documentation), so "Boeing 737" would
    reach it as text it never saw: lower-cased here, for training, scoring and export alike."""
    if clip.config.model_type == "siglip" and type(tokenizer).__name__.startswith("Gemma"):
        return [prompt.lower() for prompt in prompts]
    return list(prompts)


def tokenize(clip, tokenizer, prompts: list[str]) -> dict[str, torch.Tensor]:
    prompts = model_text(clip, tokenizer, prompts)
    if clip.config.model_type == "siglip":
        # Trained without an attention mask over the padding: input_ids only.
        tokens = tokenizer(prompts, padding="max_length", max_length=SIGLIP_TEXT_LENGTH, truncation=True,
                           return_tensors="pt")
        return {"input_ids": tokens["input_ids"]}
    return dict(tokenizer(prompts, padding=True, truncation=True, return_tensors="pt"))


def _projected(output) -> torch.Tensor:
    # transformers 5 returns a model output whose pooler_output holds the projected features;
    # earlier versions return the tensor itself.
    return output.pooler_output if hasattr(output, "pooler_output") else output


def text_features(clip, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
    return F.normalize(_projected(clip.get_text_features(**tokens)).float(), dim=-1)


def image_features(clip, pixels: torch.Tensor) -> torch.Tensor:
    return F.normalize(_projected(clip.get_image_features(pixel_values=pixels)).float(), dim=-1)


def logits(clip, image_feats: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
    # The model's own (frozen) temperature: 100 for OpenAI's CLIP.
    out = clip.logit_scale.exp().float() * image_feats @ text_feats.t()
    if clip.config.model_type == "siglip":
        # SigLIP was trained with a sigmoid per pair; we still train and score with a softmax
        # over the classes, where the shared bias changes nothing but keeps its logits its own.
        out = out + clip.logit_bias.float()
    return out


def image_size(clip) -> int:
    return int(clip.config.vision_config.image_size)
