"""The CLIP classifier: LoRA on the query and value projections of every image and text block,
and logits = CLIP's logit scale x cosine(image feature, class-prompt feature). No learned head:
the class prompts are the classifier, read through the (adapted) text tower."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from datadream.components.models import explained_loading
from datadream.errors import UserError

LORA_TARGETS = r".*(text_model|vision_model)\.encoder\.layers\.\d+\.self_attn\.(q_proj|v_proj)"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def load_clip(model: str):
    """(CLIPModel, tokenizer) from a hub id or a local transformers folder."""
    import transformers
    from transformers import AutoTokenizer, CLIPModel

    transformers.utils.logging.disable_progress_bar()
    local = Path(model)
    if (local.is_absolute() or local.exists()) and not (local / "config.json").is_file():
        raise UserError(f"classifier.model: {local} is not a transformers CLIP folder (no config.json)")
    with explained_loading("CLIP", model, "classifier.model", "transformers"):
        clip = CLIPModel.from_pretrained(model)
        # AutoTokenizer fails loudly where CLIPTokenizer would return an empty tokenizer.
        tokenizer = AutoTokenizer.from_pretrained(model)
    return clip, tokenizer


def add_lora(clip, rank: int, alpha: float, dropout: float):
    """Wrap CLIP with trainable LoRA (everything else frozen); returns the peft model."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=LORA_TARGETS)
    return get_peft_model(clip, config)


def load_lora(clip, folder: Path):
    from peft import PeftModel

    return PeftModel.from_pretrained(clip, folder)


def tokenize(tokenizer, prompts: list[str]) -> dict[str, torch.Tensor]:
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
    # CLIP's own (frozen) temperature: 100 for the OpenAI weights.
    return clip.logit_scale.exp().float() * image_feats @ text_feats.t()


def image_size(clip) -> int:
    return int(clip.config.vision_config.image_size)
