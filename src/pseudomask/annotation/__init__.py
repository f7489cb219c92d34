"""The budget-aware annotation loop (Bellver et al., mask-guided sample selection): what the labels cost
(`cost`), which images a person should annotate (`choose`), the job handed to an annotation tool (`job`, COCO
with the pseudo masks as polygon pre-annotations; `yolo`, a YOLO-seg export of the whole dataset), and the
corrections taken back as the dataset's strong images (`take_back`)."""
