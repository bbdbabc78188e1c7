"""Pictures of a run (PNG, matplotlib).

    python -m tools.visualize retrievals --run OUTPUT_DIR [--n 8] [--failures] [--out retrievals.png]
    python -m tools.visualize curves --run OUTPUT_DIR [OUTPUT_DIR ...] [--out curves.png]
    python -m tools.visualize gap --checkpoints A.pt B.pt [--out gap.png] [--method umap|pca]

retrievals: for N test captions, the caption and its top-5 videos as frame strips with scores, the ground
truth framed in green (``--failures``: only captions whose ground truth is not first); the numbers behind
the picture are written beside it as JSON. curves: training loss and learning rate (from log.txt) and
each run's own score from metrics.jsonl (retrieval: text-to-video R@1; captioning: CIDEr; QA: accuracy; one
panel per score) over training, one line per run and split, named by as much of its path as tells the runs
apart; a split evaluated once (a test at the end) is a star labelled as such. gap: the modality gap (UMP's
figure): paired caption and video embeddings of the test set in 2-D (UMAP when umap-learn is installed,
else PCA), two checkpoints side by side.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import torch

DPI = 100
GREEN, GREY = "#1a9641", "#bbbbbb"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def run_checkpoint(run: Path) -> Path:
    for name in ("model_best.pt", "model_final.pt"):
        if (run / name).is_file():
            return run / name
    raise FileNotFoundError(f"{run}: no model_best.pt or model_final.pt (is it a finished run's folder?)")


def encoded_test_set(checkpoint, data_path=None, features_path=None, split: str = "test"):
    """(model, dataset, encoded split) of the benchmark a checkpoint was trained on (or ``data_path``)."""
    from dataloaders import build_dataset  # start-up
    from engine.checkpoint import load_model  # start-up
    from engine.evaluate import encode_split  # start-up

    overrides = {"output_dir": None, "num_thread_reader": 0}
    if data_path:
        overrides |= {"data_path": data_path, "features_path": features_path or data_path}
    model, args = load_model(checkpoint, **overrides)
    dataset = build_dataset(args, split, tokenizer=model.tokenizer())
    return model, dataset, encode_split(model, dataset, args)


# ----------------------------------------------------------------------------------------------------
# retrievals


@torch.no_grad()
def retrieval_rows(model, dataset, encoded, n: int, failures: bool, k: int = 5) -> list[dict]:
    """The data of the grid: per chosen caption its top-k videos, scores and the ground truth's rank."""
    from engine.features import select_features  # start-up

    captions = torch.arange(encoded.num_captions)
    scores = torch.cat([model.similarity(select_features(encoded.text, rows), encoded.video).float()
                        for rows in captions.split(256)])
    truth = encoded.caption_to_video
    gt_scores = scores.gather(1, truth[:, None])
    ranks = 1 + (scores > gt_scores).sum(1)
    chosen = [int(c) for c in captions if not failures or ranks[c] > 1]
    if len(chosen) > n:  # spread over the split, not its first n
        chosen = [chosen[int(i)] for i in np.linspace(0, len(chosen) - 1, n).round()]
    rows = []
    for c in chosen:
        top = scores[c].topk(min(k, scores.shape[1]))
        rows.append({"caption_index": c, "caption": dataset.captions[c], "ground_truth": int(truth[c]),
                     "ground_truth_id": dataset.records[int(truth[c])].video_id, "ground_truth_rank": int(ranks[c]),
                     "top": [{"video": int(v), "video_id": dataset.records[int(v)].video_id, "score": float(s),
                              "is_ground_truth": int(v) == int(truth[c])} for s, v in zip(top.values, top.indices)]})
    return rows


def retrievals_figure(rows: list[dict], dataset, out, k: int = 5, strip_width: float = 2.6, row_height: float = 0.9):
    """The grid: one row per caption (text, then k strips); the ground truth in a green frame."""
    from tools.frames import read_strip  # start-up

    plt = _pyplot()
    text_width = 3.2
    width, height = text_width + k * strip_width, max(1, len(rows)) * row_height + 0.3
    fig = plt.figure(figsize=(width, height), dpi=DPI)
    for r, row in enumerate(rows):
        top = 1 - (0.3 / height) - (r + 1) * row_height / height
        ax = fig.add_axes((0.005, top, text_width / width - 0.01, row_height / height))
        ax.axis("off")
        rank = row["ground_truth_rank"]
        ax.text(0, 0.5, _wrap(row["caption"], 34) + f"\n(ground truth at rank {rank})", va="center", fontsize=8,
                color="black" if rank == 1 else "#b2182b")
        for j, hit in enumerate(row["top"]):
            left = (text_width + j * strip_width) / width
            ax = fig.add_axes((left + 0.004, top + 0.02 / height, strip_width / width - 0.008,
                               (row_height - 0.25) / height))
            try:
                ax.imshow(np.asarray(read_strip(dataset.records[hit["video"]].video_path, count=4, height=48)))
            except Exception as exc:  # an unreadable video still gets its cell, with the reason
                ax.text(0.5, 0.5, f"unreadable: {exc}"[:60], ha="center", va="center", fontsize=6)
            ax.set_xticks([])
            ax.set_yticks([])
            colour = GREEN if hit["is_ground_truth"] else GREY
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(3 if hit["is_ground_truth"] else 0.8)
            ax.set_title(f"{j + 1}. {hit['video_id']}  {hit['score']:.3f}", fontsize=7, pad=2,
                         color=GREEN if hit["is_ground_truth"] else "black")
    fig.text(0.005, 1 - 0.15 / height, f"top-{k} videos per caption; ground truth framed in green", fontsize=8,
             va="center")
    return _save(fig, out)


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)[:4])


def _save(fig, out) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI)
    _pyplot().close(fig)
    return out


# ----------------------------------------------------------------------------------------------------
# curves

_STEP = re.compile(r"epoch (\d+) step (\d+)/(\d+) loss ([-\d.eE+na]+) lr ([-\d.eE+]+)")
_EPOCH = re.compile(r"epoch (\d+)/(\d+) done: mean loss ([-\d.eE+na]+) over \d+ steps.*lr ([-\d.eE+]+)")


def training_log(run: Path) -> dict:
    """Loss and learning rate from log.txt: per logged step (x = epochs as a fraction) and per epoch."""
    steps, epochs = [], []
    path = run / "log.txt"
    for line in path.read_text().splitlines() if path.is_file() else []:
        if m := _STEP.search(line):
            epoch, step, total = int(m[1]), int(m[2]), int(m[3])
            steps.append((epoch - 1 + step / total, float(m[4]), float(m[5])))
        elif m := _EPOCH.search(line):
            epochs.append((int(m[1]), float(m[3]), float(m[4])))
    return {"steps": steps, "epochs": epochs}


# The score each task selects its kept epoch by (engine.tasks' score_key), as the curves' panels name it.
SCORE_PANELS = {"t2v/R1": ("text-to-video R@1", "R@1 (%)"), "CIDEr": ("captioning CIDEr", "CIDEr"),
                "accuracy": ("QA accuracy", "accuracy (%)")}


def evaluation_log(run: Path) -> tuple[str | None, dict[str, list[tuple[int, float]]]]:
    """(the run's score, its values per split over epochs) from metrics.jsonl: the first of
    SCORE_PANELS its records hold (records without an epoch are left out)."""
    path = run / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    records = [r for r in records if r.get("epoch") is not None]
    score = next((key for key in SCORE_PANELS if any(key in r.get("metrics", {}) for r in records)), None)
    out: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        if score in record.get("metrics", {}):
            out.setdefault(record["split"], []).append((record["epoch"], record["metrics"][score]))
    return score, out


def run_labels(runs: list[Path]) -> list[str]:
    """The shortest trailing part of each run's path that tells the runs apart (a/seed1 and b/seed1, not
    seed1 twice); a folder given twice gets its position appended."""
    parts = [Path(run).resolve().parts for run in runs]
    distinct = list(dict.fromkeys(parts))
    for depth in range(1, max(len(p) for p in distinct) + 1):
        names = {p: str(Path(*p[-depth:])) for p in distinct}
        if len(set(names.values())) == len(distinct):
            break
    return [names[p] + (f" ({i + 1})" if parts.count(p) > 1 else "") for i, p in enumerate(parts)]


def curves_figure(runs: list[Path], out) -> tuple[Path, dict]:
    plt = _pyplot()
    logs = {}
    for run in runs:
        train, (score, evals) = training_log(run), evaluation_log(run)
        if not train["steps"] and not train["epochs"] and not evals:
            raise ValueError(f"{run}: neither log.txt training lines nor metrics.jsonl evaluations")
        logs[run] = train, score, evals
    scores = [key for key in SCORE_PANELS if any(score == key for _, score, _ in logs.values())] or ["t2v/R1"]
    fig, axes = plt.subplots(1, 2 + len(scores), figsize=(5 * (2 + len(scores)), 4), dpi=DPI)
    data = {}
    for number, (run, label) in enumerate(zip(runs, run_labels(runs))):
        colour = f"C{number % 10}"  # one colour per run in every panel
        train, score, evals = logs[run]
        data[str(run)] = {"label": label, "train": train, "score": score, "eval": evals}
        points = train["steps"] or [(e, loss, lr) for e, loss, lr in train["epochs"]]
        if points:
            x, loss, lr = zip(*points)
            marker = "o" if len(points) < 20 else None
            axes[0].plot(x, loss, label=label, marker=marker, color=colour)
            axes[1].plot(x, lr, label=label, marker=marker, color=colour)
        ax = axes[2 + scores.index(score)] if score else None
        for split, values in sorted(evals.items()):
            x, value = zip(*values)
            if len(values) == 1:  # one evaluation (typically the test at the end): a star, not a lost dot
                ax.plot(x, value, marker="*", markersize=12, linestyle="none", color=colour,
                        label=f"{label} {split} (evaluated once, epoch {x[0]})")
            else:
                ax.plot(x, value, marker="o", linestyle="-" if split == "val" else "--", color=colour,
                        label=f"{label} {split}")
    panels = [("training loss", "loss"), ("learning rate", "lr")] + [SCORE_PANELS[key] for key in scores]
    for ax, (title, ylabel) in zip(axes, panels):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.13, top=0.9, wspace=0.25)
    return _save(fig, out), {"runs": data, "panels": [_panel_record(ax) for ax in axes]}


def _panel_record(ax) -> dict:
    """What a panel of the curves shows (written beside the PNG): its title and each line's legend label,
    marker and points."""
    return {"title": ax.get_title(), "ylabel": ax.get_ylabel(),
            "lines": [{"label": line.get_label(), "marker": line.get_marker(),
                       "points": [[float(x), float(y)] for x, y in zip(line.get_xdata(), line.get_ydata())]}
                      for line in ax.get_lines()]}


# ----------------------------------------------------------------------------------------------------
# gap


def project_2d(points: np.ndarray, method: str = "auto") -> tuple[np.ndarray, str]:
    """(N, 2) coordinates: UMAP (umap-learn) when installed and asked for or ``auto``, else PCA."""
    if method in ("auto", "umap"):
        try:
            import umap
        except ImportError:
            if method == "umap":
                raise ValueError("--method umap needs umap-learn (pip install -r requirements-tools.txt)") from None
        else:
            reducer = umap.UMAP(n_components=2, random_state=0, n_neighbors=min(15, len(points) - 1))
            return np.asarray(reducer.fit_transform(points)), "UMAP"
    centred = points - points.mean(0, keepdims=True)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T, "PCA"


def paired_embeddings(model, encoded) -> tuple[np.ndarray, np.ndarray]:
    """Unit text and video embeddings of (first caption, its video) pairs."""
    from tools.ann import primary_vectors  # start-up

    text, video = primary_vectors(encoded.text), primary_vectors(encoded.video)
    first = {}
    for caption, owner in enumerate(encoded.caption_to_video.tolist()):
        first.setdefault(owner, caption)
    videos = sorted(first)
    return text[[first[v] for v in videos]].numpy(), video[videos].numpy()


def gap_figure(panels: list[tuple[str, np.ndarray, np.ndarray]], out, method: str = "auto") -> tuple[Path, list]:
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 5.5), dpi=DPI, squeeze=False)
    data = []
    for ax, (name, text, video) in zip(axes[0], panels):
        xy, used = project_2d(np.concatenate([text, video]), method)
        t, v = xy[:len(text)], xy[len(text):]
        gap = float(np.linalg.norm(text.mean(0) - video.mean(0)))
        for a, b in zip(t, v):
            ax.plot([a[0], b[0]], [a[1], b[1]], color="#dddddd", linewidth=0.5, zorder=1)
        ax.scatter(t[:, 0], t[:, 1], s=10, c="#d95f02", label="captions", zorder=2)
        ax.scatter(v[:, 0], v[:, 1], s=10, c="#1b9e77", label="videos", zorder=2)
        ax.set_title(f"{name}\n{used}, {len(text)} pairs, gap |mean(t) - mean(v)| = {gap:.3f}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=8)
        data.append({"checkpoint": name, "projection": used, "pairs": len(text), "gap": gap,
                     "mean_pair_cosine": float((text * video).sum(1).mean())})
    fig.subplots_adjust(left=0.03, right=0.97, bottom=0.04, top=0.88, wspace=0.1)
    return _save(fig, out), data


# ----------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.visualize", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("retrievals", help="top-5 videos of test captions as a PNG grid")
    p.add_argument("--run", required=True, help="a finished run's output folder")
    p.add_argument("--checkpoint", default=None, help="default: the run's model_best.pt, else model_final.pt")
    p.add_argument("--n", type=int, default=8, help="captions shown")
    p.add_argument("--failures", action="store_true", help="only captions whose ground truth is not first")
    p.add_argument("--data_path", default=None, help="the benchmark's folder when it moved")
    p.add_argument("--features_path", default=None)
    p.add_argument("--out", default=None, help="default: RUN/retrievals.png (retrieval_failures.png)")
    p = sub.add_parser("curves", help="loss, lr and R@1 over training")
    p.add_argument("--run", required=True, nargs="+", help="one or more run folders (one line each)")
    p.add_argument("--out", default=None, help="default: RUN/curves.png of the first run")
    p = sub.add_parser("gap", help="the modality gap of two checkpoints")
    p.add_argument("--checkpoints", required=True, nargs="+", help="one or two self-contained checkpoints")
    p.add_argument("--data_path", default=None, help="default: the first checkpoint's benchmark")
    p.add_argument("--features_path", default=None)
    p.add_argument("--method", choices=("auto", "umap", "pca"), default="auto")
    p.add_argument("--out", default="gap.png")
    args = parser.parse_args(argv)
    from dataloaders import DataError  # start-up
    from modules.clip import CheckpointError  # start-up

    try:
        if args.what == "retrievals":
            run = Path(args.run)
            model, dataset, encoded = encoded_test_set(args.checkpoint or run_checkpoint(run), args.data_path,
                                                       args.features_path)
            rows = retrieval_rows(model, dataset, encoded, args.n, args.failures)
            if not rows:
                print("no caption to show (with --failures: every ground truth is first)")
                return 0
            out = Path(args.out or run / ("retrieval_failures.png" if args.failures else "retrievals.png"))
            retrievals_figure(rows, dataset, out)
            out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
        elif args.what == "curves":
            runs = [Path(r) for r in args.run]
            out, data = curves_figure(runs, args.out or runs[0] / "curves.png")
            out.with_suffix(".json").write_text(json.dumps(data))
        else:
            if len(args.checkpoints) > 2:
                raise ValueError("gap compares one or two checkpoints")
            panels, data_path, features_path = [], args.data_path, args.features_path
            for checkpoint in args.checkpoints:
                model, _, encoded = encoded_test_set(checkpoint, data_path, features_path)
                if data_path is None:  # the second checkpoint is shown on the first one's test set
                    data_path, features_path = model.args.data_path, model.args.features_path
                panels.append((str(checkpoint), *paired_embeddings(model, encoded)))
            out, data = gap_figure(panels, args.out, args.method)
            Path(out).with_suffix(".json").write_text(json.dumps(data, indent=1))
    except (CheckpointError, DataError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"written: {Path(out).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
