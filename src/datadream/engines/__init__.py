"""Training engines: they train what they are given and return it, and know no output folder.

The stage that calls an engine decides where its work goes, and writes the store entry and its
done-marker (stages/adapt.py): an engine can serve any stage, or a method other than DataDream,
without learning the run layout.

    lora_training  the resident base model and the sequential LoRA trainer (and what both engines share)
    lora_batched   K class adapters in one forward/backward, the same optimisation as K sequential runs
    checkpoint     a training state saved and restored mid-run (adapters and the classifier)
"""
