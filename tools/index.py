"""Embed every video of a folder with a trained model into an on-disk index.

    python -m tools.index --checkpoint outputs/run/model_final.pt --videos ~/videos --out ~/videos.index

The folder is searched recursively. Videos are decoded by DataLoader workers on every core (``--workers``)
and sampled exactly as the model's evaluation samples them (its checkpoint's frame flags); the main
process runs the model. Work is committed every ``--chunk`` videos, so a killed run continues where it
stopped; running again on the same (or another) folder embeds only the videos not yet in the index.
Unreadable videos are listed with their reason (on screen and in INDEX/unreadable.tsv) and never
embedded. FAISS builds an approximate index when installed and the index is large (``--faiss``).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from tools.ann import primary_vectors, scoring_mode
from tools.store import IndexFolderError, IndexStore, file_signature, index_header

FAULT_ENV = "UNIVTR_INDEX_FAULT_AFTER_CHUNKS"  # tests: die abruptly after this many committed chunks


class VideoFiles(Dataset):
    """Item i: the model's clip of ``paths[i]`` and what the index records, or the reason it failed."""

    def __init__(self, paths: list[str], loader, thumbs: list[Path], strip_frames: int, strip_height: int):
        self.paths, self.loader, self.thumbs = paths, loader, thumbs
        self.strip_frames, self.strip_height = strip_frames, strip_height

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        from dataloaders.video import VideoDecodeError, probe  # start-up
        from dataloaders.video.errors import describe  # start-up
        from tools.frames import read_strip, save_jpeg  # start-up

        path = self.paths[i]
        try:
            info = probe(path, self.loader.backend, threads=self.loader.threads)
            video, mask = self.loader(path)
            save_jpeg(read_strip(path, self.strip_frames, self.strip_height, self.loader.backend), self.thumbs[i])
        except VideoDecodeError as exc:
            return {"i": i, "reason": exc.reason}
        except Exception as exc:  # a decoder crash is an unreadable file, not a crash of the tool
            return {"i": i, "reason": describe(exc)}
        size, mtime = file_signature(path)
        return {"i": i, "video": video, "mask": mask, "line": {
            "path": path, "size": size, "mtime": mtime, "fps": info.fps, "num_frames": info.num_frames,
            "duration": info.num_frames / info.fps if info.fps > 0 else None,
            "frames": self.loader.indices(info.num_frames, info.fps)}}


def _init_worker(_worker_id: int) -> None:
    from dataloaders.video.batch import _quiet_worker  # start-up

    _quiet_worker()


def collate(items: list[dict]) -> dict:
    ok = [x for x in items if "video" in x]
    return {"failed": [(x["i"], x["reason"]) for x in items if "reason" in x],
            "index": [x["i"] for x in ok], "lines": [x["line"] for x in ok],
            "video": torch.stack([x["video"] for x in ok]) if ok else None,
            "mask": torch.stack([x["mask"] for x in ok]) if ok else None}


def as_tuple(features) -> tuple[torch.Tensor, ...]:
    return tuple(features) if isinstance(features, (tuple, list)) else (features,)


def build_index(checkpoint, videos: list[str], out, *, workers: int | None = None, batch_size: int = 16,
                chunk: int = 256, faiss: str = "auto", recall_target: float = 0.95, backend: str | None = None,
                strip_frames: int = 5, strip_height: int = 72, device: str = "cpu", progress: bool = True,
                extensions=None) -> dict:
    """Embed the videos under ``videos`` (folders, searched recursively) not yet in the index ``out``;
    returns a summary {"added", "failed" (path -> reason), "total"}."""
    from dataloaders.video import VideoClipLoader  # start-up
    from dataloaders.video.batch import VIDEO_EXTENSIONS, list_videos  # start-up
    from engine.checkpoint import load_model  # start-up

    checkpoint = Path(checkpoint).resolve()
    if chunk % batch_size:
        raise ValueError(f"--chunk ({chunk}) must be a multiple of --batch_size ({batch_size})")
    listed: list[str] = []
    for folder in videos:
        listed += [str(p.resolve()) for p in list_videos(folder, extensions or VIDEO_EXTENSIONS)]
    if not listed:
        raise ValueError(f"no video files under {', '.join(map(str, videos))}")
    model, args = load_model(checkpoint, device)
    if backend or args.video_backend == "lmdb":  # an LMDB of frames only serves the dataset it was made from
        args.video_backend = backend or "auto"
    store = IndexStore.create_or_open(out, index_header(checkpoint, model, strip_frames, strip_height))
    store.clean_uncommitted()
    done = {e.path: (e.size, e.mtime) for e in store.entries()}
    todo = sorted({p for p in listed if done.get(p) != file_signature(p)})
    next_id = max((e.id for e in store.all_entries()), default=-1) + 1
    listed_set, todo_set = set(listed), set(todo)
    failures = {p: r for p, r in store.unreadable().items() if p not in listed_set}  # other folders' reports
    loader = VideoClipLoader.from_args(args, train=False)
    dataset = VideoFiles(todo, loader, [store.thumb_path(p) for p in todo], strip_frames, strip_height)
    workers = os.cpu_count() if workers is None else workers
    # Spawned, not forked: a fork inherits the parent's decoder and OpenMP thread pools (OpenCV, FAISS) in
    # whatever state they are, and a worker forked from a process that has decoded before can hang.
    data = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate,
                      worker_init_fn=_init_worker if workers else None,
                      multiprocessing_context="spawn" if workers else None)
    fault_after = int(os.environ.get(FAULT_ENV, "0"))
    from tqdm import tqdm

    bar = tqdm(total=len(todo), desc="indexing", unit="video", file=sys.stderr, disable=not progress,
               dynamic_ncols=True)
    pending: list[tuple[tuple, list[dict]]] = []
    committed = added = 0

    def commit():
        nonlocal committed
        if pending:
            features = tuple(torch.cat([p[0][i] for p in pending]) for i in range(len(pending[0][0])))
            store.commit(features, [line for _, lines in pending for line in lines])
        pending.clear()
        committed += 1
        if fault_after and committed >= fault_after:
            os._exit(17)

    seen = 0
    with torch.no_grad():
        for batch in data:
            for i, reason in batch["failed"]:
                failures[todo[i]] = reason
            if batch["video"] is not None:
                features = as_tuple(model.encode_video(batch["video"].to(device), batch["mask"].to(device)))
                lines = [{**line, "id": next_id + n} for n, line in enumerate(batch["lines"])]
                next_id += len(lines)
                pending.append((tuple(f.cpu() for f in features), lines))
                added += len(lines)
                for line in lines:
                    failures.pop(line["path"], None)
            seen += len(batch["failed"]) + len(batch["index"])
            bar.update(len(batch["failed"]) + len(batch["index"]))
            bar.set_postfix(unreadable=sum(1 for p in failures if p in todo_set), refresh=False)
            if seen % chunk == 0 or seen == len(todo):
                commit()
    bar.close()
    store.write_unreadable(failures)
    entries = store.entries()
    ann = build_ann(store, model, len(entries), faiss, recall_target) if added or faiss == "on" else \
        store.header().get("ann")
    store.update_header(count=len(entries), ann=ann, video_backend=args.video_backend)
    this_run = {p: r for p, r in failures.items() if p in todo_set}
    return {"added": added, "failed": this_run, "total": len(entries), "ann": ann}


def build_ann(store: IndexStore, model, count: int, mode: str, recall_target: float) -> dict | None:
    """(Re)build the FAISS index when asked for (``on``) or useful (``auto``: installed, large index)."""
    from tools import ann  # start-up

    store.ann_path.unlink(missing_ok=True)
    wanted = mode == "on" or (mode == "auto" and count >= ann.FAISS_MIN_ITEMS and ann.faiss_available())
    if not wanted or count == 0:
        return None
    features = store.load_features()
    if scoring_mode(model, features) == "full":
        print(f"note: the {model.head_name} head scores every (caption, video) pair jointly: exact search only",
              file=sys.stderr)
        return None
    if not ann.faiss_available():
        raise ValueError("--faiss on needs faiss-cpu (pip install faiss-cpu)")
    vectors = primary_vectors(features)
    index = ann.FaissIndex.build(vectors)
    sample = vectors[torch.randperm(len(vectors), generator=torch.Generator().manual_seed(0))[:256]]
    nprobe, recall = ann.calibrate_nprobe(index, ann.ExactIndex(vectors), sample, k=min(10, count), target=recall_target)
    index.save(store.ann_path)
    return {"kind": "ivf_flat", "nlist": index.nlist, "nprobe": nprobe, "count": count,
            "calibrated_recall_at_10": round(recall, 4), "calibration": "256 indexed videos as queries"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.index", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a model_final.pt / model_best.pt of a UniVTR run")
    parser.add_argument("--videos", required=True, nargs="+", help="folder(s) of videos, searched recursively")
    parser.add_argument("--out", required=True, help="index folder (created, or completed when it exists)")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default: all cores)")
    parser.add_argument("--batch_size", type=int, default=16, help="videos per model call")
    parser.add_argument("--chunk", type=int, default=256, help="videos per committed shard (a multiple of the batch)")
    parser.add_argument("--faiss", choices=("auto", "on", "off"), default="auto",
                        help=f"approximate index: auto = when faiss-cpu is installed and >= {50_000:,} videos")
    parser.add_argument("--recall_target", type=float, default=0.95, help="FAISS nprobe is chosen for this recall@10")
    parser.add_argument("--video_backend", default=None, help="decoder (default: the checkpoint's, lmdb -> auto)")
    parser.add_argument("--rebuild", action="store_true", help="delete the index folder first")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--unreadable_out", default=None, help="also write this run's unreadable files here (TSV)")
    args = parser.parse_args(argv)
    from dataloaders.video.batch import report_failures  # start-up
    from modules.clip import CheckpointError  # start-up

    if args.rebuild and Path(args.out).exists():
        if not (Path(args.out) / "index.json").is_file():
            print(f"error: --rebuild: {args.out} is not a video index; not deleting it", file=sys.stderr)
            return 2
        shutil.rmtree(args.out)
    try:
        summary = build_index(args.checkpoint, args.videos, args.out, workers=args.workers, batch_size=args.batch_size,
                              chunk=args.chunk, faiss=args.faiss, recall_target=args.recall_target,
                              backend=args.video_backend, device=args.device)
    except (CheckpointError, IndexFolderError, FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report_failures(list(summary["failed"].items()), summary["added"] + len(summary["failed"]), "unreadable",
                    args.unreadable_out)
    ann = summary["ann"]
    print(f"{summary['added']} videos added; the index {args.out} holds {summary['total']} "
          f"(search: {'FAISS IVF, nprobe ' + str(ann['nprobe']) if ann else 'exact'}); unreadable files: "
          f"{Path(args.out) / 'unreadable.tsv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
