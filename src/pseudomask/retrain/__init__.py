"""Retraining: MMDetection Mask R-CNN on the exported pseudo masks, and prediction with the trained model.

- `config`: the MMDetection config generated from config.yaml's `retrain:` section (no mmdet import);
- `modules`: the custom MMDetection modules (mask_ignore loading, ignore-aware mask head), registered on
  import through the config's `custom_imports`;
- `train`: MMEngine training, resumable, writing weights-only `latest.pth`;
- `predict`: COCO results (RLE masks) of a trained checkpoint on a folder of images.
"""
