from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("report", help="self-contained HTML report of a results folder (overlays, drop curve, counts)")
    p.add_argument("results", help="results folder of the workflow (holds ingest/, merge_drop/, ...)")
    p.add_argument("--out", required=True, help="HTML file to write")
    p.add_argument("--ground-truth", help="COCO JSON with true masks: adds mIoU to the drop curve and per stage")
    p.add_argument("--samples", type=int, default=4, help="sample images shown stage by stage (default 4)")
    p.add_argument("--stages", nargs="+", help="stages to include (default: every stage found)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..report import build_report

    out = build_report(args.results, args.out, ground_truth=args.ground_truth, samples=args.samples,
                       stages=args.stages)
    print(f"report -> {out}")
    return 0
