"""Write one split of any dataset as WebDataset tar shards, read back by dataloaders/shards.py.

    python preprocess/make_shards.py --datatype webvid --data_path ANNOTATIONS --features_path VIDEOS --out DIR \\
        [--split train] [--samples_per_shard 1000] [--workers N] [any data flag of main_task_retrieval.py]

The records are the ones training reads (same parsers and flags, ``build_dataset``; videos missing on
disk are listed in DIR/missing_videos_*.txt). Every video is probed first (its first, middle and last
frames decoded, as ``python -m dataloaders.verify_videos`` does); unreadable ones are listed with their
reason in DIR/unreadable_videos.txt and left out, never written. The readable ones, in an order shuffled
by --seed so that every shard mixes the whole split, are cut into shards of --samples_per_shard:
DIR/000000.tar, 000001.tar, ..., each sample being KEY.json ({"video_id", "captions", "start", "end"},
plus "caption_windows" where the dataset has them) and KEY.<ext>: the video file's bytes as they are,
under its own extension (mp4, webm, avi, ...). DIR/shards.json, written last, lists the shards with their
sample counts and the total.

Resumable: a shard is written under a temporary name and renamed when complete, and the probe results
are kept in DIR/probed_videos.tsv, so a rerun writes exactly the shards that are missing and leaves the
finished ones alone. The settings are recorded in DIR/shard_settings.json; a rerun with other settings
(or changed annotations) is refused. Exit code 0, 1 when videos were left out, 2 for a usage or data error.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from dataloaders import SPLITS, DataError, VideoRecord, build_dataset  # noqa: E402
from dataloaders.shards import FORMAT_VERSION, INDEX_FILE, META_FIELD  # noqa: E402
from dataloaders.verify_videos import check_video  # noqa: E402
from dataloaders.video.backends import candidate_backends  # noqa: E402
from dataloaders.video.batch import TEMP_MARK, report_failures, run_parallel  # noqa: E402
from engine import options  # noqa: E402
from preprocess.settings import record_settings, write_text_atomically  # noqa: E402

SETTINGS_FILE = "shard_settings.json"
PROBE_FILE = "probed_videos.tsv"
UNREADABLE_FILE = "unreadable_videos.txt"
KEY_LENGTH = 64  # tar member names stay well inside the 100 characters of a ustar header


def build_parser():
    """main_task_retrieval.py's run, data, video and selection flags, plus this tool's own."""
    parser = options.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    for add in (options.add_run_args, options.add_data_args, options.add_video_args, options.add_selection_args):
        add(parser)
    group = parser.add_argument_group("shards")
    group.add_argument("--out", required=True, help="folder of the shards (created, or resumed)")
    group.add_argument("--split", default="train", choices=SPLITS, help="which split to write")
    group.add_argument("--samples_per_shard", type=int, default=1000, help="videos per shard")
    group.add_argument("--workers", type=int, default=os.cpu_count(), help="probing processes (default: all cores)")
    return parser


def sample_keys(records: list[VideoRecord]) -> list[str]:
    """A unique tar key per record: the video id with everything but letters, digits, '_' and '-' made
    '_' (webdataset splits a member name at its first dot), shortened, numbered where two collide."""
    keys, seen = [], set()
    for record in records:
        base = re.sub(r"[^A-Za-z0-9_-]+", "_", record.video_id).strip("_")[:KEY_LENGTH] or "video"
        key, n = base, 1
        while key in seen:
            key, n = f"{base}-{n}", n + 1
        seen.add(key)
        keys.append(key)
    return keys


def sample_meta(record: VideoRecord) -> dict:
    meta = {"video_id": record.video_id, "captions": list(record.captions), "start": record.start, "end": record.end}
    if record.caption_windows is not None:
        meta["caption_windows"] = [list(window) for window in record.caption_windows]
    return meta


def video_field(path: str) -> str:
    return Path(path).suffix.lower().lstrip(".") or "video"


def records_digest(records: list[VideoRecord]) -> str:
    """SHA-1 of what the shards would hold: every record's metadata and video file."""
    digest = hashlib.sha1()
    for record in records:
        entry = [sample_meta(record), os.path.abspath(record.video_path)]
        digest.update(json.dumps(entry, ensure_ascii=False).encode("utf-8"))
    return digest.hexdigest()


def probe_videos(paths: list[str], backends: list[str], workers: int, cache: Path) -> dict[str, str | None]:
    """{path: None when readable, else the reason}; results already in ``cache`` are not probed again,
    new ones are appended to it as they come (a line cut short by a kill is dropped)."""
    results: dict[str, str | None] = {}
    text = cache.read_text(encoding="utf-8") if cache.is_file() else ""
    complete = text[:text.rfind("\n") + 1]
    if complete != text:
        cache.write_text(complete, encoding="utf-8")
    for line in complete.splitlines():
        path, _, reason = line.partition("\t")
        results[path] = reason or None
    todo = sorted({p for p in paths if p not in results})
    with open(cache, "a", encoding="utf-8") as log:
        for path, reason in run_parallel(functools.partial(check_video, backends=backends), todo, workers, "probing"):
            reason = " ".join((reason or "").split()) or None  # one line, no tab
            results[path] = reason
            if "\t" not in path and "\n" not in path:
                log.write(f"{path}\t{reason or ''}\n")
                log.flush()
    return results


def write_shard(path: Path, samples: list[tuple[str, VideoRecord]]) -> None:
    """One complete shard at ``path``, written under a temporary name first."""
    from webdataset import TarWriter

    tmp = path.with_name(path.name + TEMP_MARK)
    try:
        with open(tmp, "wb") as stream, TarWriter(stream, encoder=False, mtime=0, user="univtr", group="univtr") as tar:
            for key, record in samples:
                meta = json.dumps(sample_meta(record), ensure_ascii=False).encode("utf-8")
                video = Path(record.video_path).read_bytes()
                tar.write({"__key__": key, META_FIELD: meta, video_field(record.video_path): video})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def make_shards(args) -> tuple[dict, list[tuple[str, str]]]:
    """Write (or complete) the shards; returns (the shards.json index, [(video path, reason) left out])."""
    if args.samples_per_shard < 1:
        raise ValueError(f"--samples_per_shard must be at least 1, got {args.samples_per_shard}")
    if args.video_backend == "lmdb":
        raise ValueError("shards carry the video files; --video_backend lmdb does not apply")
    backends = candidate_backends(args.video_backend)
    out = Path(args.out)
    if args.output_dir is None:
        args.output_dir = str(out)  # build_dataset's list of missing videos goes beside the shards
    dataset = build_dataset(args, args.split)
    out.mkdir(parents=True, exist_ok=True)
    records, keys = dataset.records, sample_keys(dataset.records)
    settings = {"format_version": FORMAT_VERSION, "datatype": args.datatype, "split": args.split,
                "samples_per_shard": args.samples_per_shard, "seed": args.seed, "videos": len(records),
                "records_sha1": records_digest(records)}
    record_settings(out / SETTINGS_FILE, settings, out, "rerun with the same settings or choose another --out")
    for stale in out.glob("*.tar" + TEMP_MARK):  # left by a killed run
        stale.unlink()

    probed = probe_videos([r.video_path for r in records], backends, args.workers, out / PROBE_FILE)
    left_out = sorted({(r.video_path, probed[r.video_path]) for r in records if probed[r.video_path] is not None})
    left_out += [(r.video_path, "missing on disk") for r in dataset.missing_videos]
    report_failures(left_out, len(records) + len(dataset.missing_videos), "left out", out / UNREADABLE_FILE)
    order = np.random.default_rng(args.seed).permutation(len(records)).tolist()
    good = [i for i in order if probed[records[i].video_path] is None]
    if not good:
        raise DataError(f"none of the {len(records)} videos of {args.datatype} {args.split} is readable; "
                        f"see {out / UNREADABLE_FILE}")
    shards = [good[k:k + args.samples_per_shard] for k in range(0, len(good), args.samples_per_shard)]
    names = [f"{number:06d}.tar" for number in range(len(shards))]
    todo = [(name, shard) for name, shard in zip(names, shards) if not (out / name).is_file()]
    with tqdm(total=sum(len(shard) for _, shard in todo), desc="writing shards", unit="video", file=sys.stderr,
              dynamic_ncols=True) as bar:
        for name, shard in todo:
            write_shard(out / name, [(keys[i], records[i]) for i in shard])
            bar.update(len(shard))
    index = {"format_version": FORMAT_VERSION, "datatype": args.datatype, "split": args.split,
             "paragraph": dataset.paragraph, "samples_per_shard": args.samples_per_shard, "total": len(good),
             "left_out": len(left_out), "shards": [{"name": n, "samples": len(s)} for n, s in zip(names, shards)]}
    write_text_atomically(out / INDEX_FILE, json.dumps(index, indent=1, ensure_ascii=False) + "\n")
    print(f"{len(todo)} shards written, {len(shards) - len(todo)} already complete: {len(good)} videos in "
          f"{len(shards)} shards, listed in {out / INDEX_FILE}")
    return index, left_out


def main(argv=None) -> int:
    args = options.parse_args(argv, build_parser())
    try:
        _, left_out = make_shards(args)
    except (DataError, ValueError, RuntimeError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 1 if left_out else 0


if __name__ == "__main__":
    sys.exit(main())
