"""MCG-style mask proposals (Pont-Tuset et al.) in Python, and the `mcg` stage (Li et al.'s use of them).

hierarchy: base superpixels, boundary maps at several scales, merge trees (multiscale hierarchical
segmentation); grouping: candidates from the trees, pairs and triplets of adjacent regions,
deduplication, objectness, near-duplicate suppression; proposals: one image's pool and ranked
proposals; select/stage: per-box choice and the artifact; matfile: precomputed MCG .mat files.
"""

from .matfile import MatFileError, read_mcg_mat, write_mcg_mat
from .proposals import DEFAULTS, McgSettings, ProposalPool, proposal_params, proposal_pool, proposals_for_image
from .boxes import MIN_BOX, image_result, run_mcg, select_for_boxes

__all__ = [
    "DEFAULTS", "MIN_BOX", "MatFileError", "McgSettings", "ProposalPool", "image_result", "proposal_params",
    "proposal_pool", "proposals_for_image", "read_mcg_mat", "run_mcg", "select_for_boxes", "write_mcg_mat",
]
