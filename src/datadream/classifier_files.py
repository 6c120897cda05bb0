"""Loading a run's trained (or zero-shot) classifier from its files: shared by the evaluate stage
and by predict and export, so it sits below the stages (a stage never imports another)."""

from __future__ import annotations

import json

from datadream.components.classifiers.backbones import Classifier, load_pretrained
from datadream.layout import LORA_FOLDER, PROMPTS
from datadream.runs import Run


def load_classifier(run: Run, marker: dict) -> Classifier:
    """The classifier the train marker vouches for: its backbone, with its LoRA unless zero-shot."""
    classifier = load_pretrained(run.config.classifier.model)
    if marker["train_on"] != "none":
        classifier.load_lora(run.layout.classifier / LORA_FOLDER)
    return classifier


def class_prompts(run: Run) -> tuple[list[str], list[str]]:
    """(class names, class prompts) as the classifier was saved with them, in label order."""
    saved = json.loads((run.layout.classifier / PROMPTS).read_text(encoding="utf-8"))
    return saved["classes"], saved["prompts"]
