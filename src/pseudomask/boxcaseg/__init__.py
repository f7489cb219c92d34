"""BoxCaseg (Wang et al., CVPR 2021): a class-agnostic box-conditioned segmenter jointly trained on box crops
(MIL over row/column bags) and salient images (pixel BCE), used to predict a mask inside every GT box.

Modules: `model` (network, heads, weight transfer, checkpoints), `losses`, `data` (box jitter, salient folder,
ratio sampler), `train`, `infer`. Import the submodules; this package imports nothing heavy itself.
"""
