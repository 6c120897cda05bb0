"""Loading a run's trained (or zero-shot) classifier from its files: shared by the evaluate and
predict stages and by export, so it sits below the stages (a stage never imports another)."""

from __future__ import annotations

import json

from datadream.components.classifiers import clip as clip_ops
from datadream.layout import LORA_FOLDER, PROMPTS
from datadream.runs import Run


def load_classifier(run: Run, marker: dict):
    """(model, tokens on no device yet, image size) of the trained (or zero-shot) classifier."""
    model, tokenizer = clip_ops.load_clip(run.config.classifier.model)
    if marker["train_on"] != "none":
        model = clip_ops.load_lora(model, run.layout.classifier / LORA_FOLDER)
    prompts = json.loads((run.layout.classifier / PROMPTS).read_text(encoding="utf-8"))["prompts"]
    return model, clip_ops.tokenize(model, tokenizer, prompts), clip_ops.image_size(model)
