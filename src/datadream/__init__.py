"""datadream: few-shot guided dataset generation (DataDream, ECCV 2024) and CLIP classifiers."""

__version__ = "0.1.0"
