"""pseudomask: pseudo instance masks from boxes or image-level tags, for weakly supervised instance segmentation."""

__version__ = "0.1.0"
