"""Mask proposals stored as MCG stores them: a superpixel map plus, per proposal, the list of its superpixels.

Shared by the MCG-style stage (which writes them) and the CAM stage (which picks among them).
In an artifact they live at /proposals/<image_id>/{superpixels, region_ptr, region_idx, scores}.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Proposals:
    superpixels: np.ndarray  # (H, W) int32 superpixel label, 0..S-1
    region_ptr: np.ndarray  # (R+1,) int64 CSR offsets into region_idx
    region_idx: np.ndarray  # int32 superpixel ids of all proposals, concatenated
    scores: np.ndarray  # (R,) float32 objectness, higher is better

    def __len__(self) -> int:
        return len(self.scores)

    def region(self, i: int) -> np.ndarray:
        return self.region_idx[self.region_ptr[i]:self.region_ptr[i + 1]]

    def mask(self, i: int) -> np.ndarray:
        """(H, W) uint8 mask of proposal i."""
        member = np.zeros(int(self.superpixels.max(initial=-1)) + 1, bool)
        member[self.region(i)] = True
        return member[self.superpixels].astype(np.uint8)

    def membership(self) -> np.ndarray:
        """(R, S) bool: which superpixels each proposal contains."""
        n_sp = int(self.superpixels.max(initial=-1)) + 1
        m = np.zeros((len(self), n_sp), bool)
        for i in range(len(self)):
            m[i, self.region(i)] = True
        return m

    def containing(self, y: int, x: int) -> np.ndarray:
        """Indices of the proposals that contain pixel (y, x)."""
        return np.flatnonzero(self.membership()[:, self.superpixels[y, x]])

    def to_map(self) -> dict[str, np.ndarray]:
        return {"superpixels": self.superpixels.astype(np.int32), "region_ptr": self.region_ptr.astype(np.int64),
                "region_idx": self.region_idx.astype(np.int32), "scores": self.scores.astype(np.float32)}

    @classmethod
    def from_map(cls, d: dict[str, np.ndarray]) -> "Proposals":
        return cls(d["superpixels"], d["region_ptr"], d["region_idx"], d["scores"])

    @classmethod
    def from_regions(cls, superpixels: np.ndarray, regions: list[np.ndarray], scores: np.ndarray) -> "Proposals":
        ptr = np.zeros(len(regions) + 1, np.int64)
        ptr[1:] = np.cumsum([len(r) for r in regions])
        idx = np.concatenate([np.asarray(r, np.int32) for r in regions]) if regions else np.zeros(0, np.int32)
        return cls(superpixels.astype(np.int32), ptr, idx, np.asarray(scores, np.float32))

    @classmethod
    def from_masks(cls, masks: np.ndarray, scores: np.ndarray) -> "Proposals":
        """Exact encoding of arbitrary binary masks: superpixels are the pixels' membership signatures."""
        masks = np.asarray(masks, bool)
        r, h, w = masks.shape
        sig = np.packbits(masks.reshape(r, -1), axis=0).T  # (H*W, ceil(R/8))
        _, labels = np.unique(sig, axis=0, return_inverse=True)
        sp = labels.reshape(h, w).astype(np.int32)
        regions = [np.unique(sp[m]) for m in masks]
        return cls.from_regions(sp, regions, scores)


def read_proposals(artifact, image_id: int) -> Proposals | None:
    """Proposals of one image from an open `Artifact` (None when the image has none)."""
    d = artifact.map("proposals", image_id)
    return Proposals.from_map(d) if d else None
