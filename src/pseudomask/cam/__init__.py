"""Image-level tags to instance masks (WISE / PRM, with Grad-CAM for stuff classes, as in Li et al.).

- `peaks`: local maxima of class activation maps and the peak stimulation layer (PRM).
- `sampling`: a proposal containing each peak, drawn with probability proportional to objectness (WISE eq. 1).
- `stuff`: Grad-CAM regions of stuff classes, thresholded at a fraction of their maximum, smaller region wins.
- `model`: the classifier (backbone, 1x1 convolution to class response maps, peak stimulation), checkpoints.
- `train`: multi-label soft-margin training on image tags, resumable.
- `extract`: CAM peaks and stuff regions of every image into a "cam" artifact.

Only `sampling` and `stuff.stuff_regions` are importable without torch.
"""
