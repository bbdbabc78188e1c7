import pytest
import torch

from dataloaders.base import RetrievalDataset, VideoRecord
from engine.evaluate import evaluate_retrieval, prepare_qb_norm
from main_task_retrieval import get_args
from modules import metrics as M

DIM = 8


class CountingLoader:
    """Video i (file "v<i>.mp4") is a clip filled with i."""

    def __init__(self):
        self.calls = 0

    def __call__(self, path, start=None, end=None, rng=None):
        self.calls += 1
        index = int(path.rsplit("/", 1)[-1][1:-4])
        return torch.full((2, 1, 1, 1), float(index)), torch.ones(2, dtype=torch.long)


class CountingTokenizer:
    """Caption "k ..." -> ids [k, ...]; counts captions tokenised."""

    def __init__(self):
        self.calls = 0

    def __call__(self, texts, max_words=32):
        self.calls += len(texts)
        ids = torch.zeros(len(texts), max_words, dtype=torch.long)
        for row, text in enumerate(texts):
            ids[row, 0] = int(text.split()[0])
        return ids, (ids > -1).long()


class OneHotModel(torch.nn.Module):
    """Text "k" and video k meet at one-hot k; features are tuples to exercise concatenation."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def encode_text(self, text_ids, text_mask):
        return torch.nn.functional.one_hot(text_ids[:, 0], DIM).float(), text_mask.sum(1)

    def encode_video(self, video, video_mask):
        index = video.flatten(1)[:, 0].long()
        return torch.nn.functional.one_hot(index, DIM).float(), video_mask.sum(1)

    def similarity(self, text_features, video_features):
        return self.scale * text_features[0] @ video_features[0].T


def dataset(captions_by_video, split="test"):
    records = [VideoRecord(f"v{i}", f"/videos/v{i}.mp4", caps) for i, caps in enumerate(captions_by_video)]
    return RetrievalDataset(records, split=split, video_loader=CountingLoader(), tokenizer=CountingTokenizer(),
                            max_words=4, name="toy")


def eval_args(*extra):
    return get_args(["--batch_size_val", "3", "--num_thread_reader", "0", "--eval_tile_elements", "4", *extra])


def test_multi_caption_evaluation_encodes_each_item_once():
    # video 0 has a caption that describes video 2: it ranks video 2 first -> rank 2
    ds = dataset([["0 a", "2 wrong", "0 b"], ["1 a"], ["2 a", "2 b"], ["3 a"]])
    model = OneHotModel().train()
    result = evaluate_retrieval(model, ds, eval_args())
    assert ds.video_loader.calls == 4 and ds._tokenize.calls == 7
    assert model.training  # mode restored
    m = result.metrics
    assert m["t2v/R1"] == pytest.approx(600 / 7) and m["t2v/MnR"] == pytest.approx(8 / 7)
    assert m["v2t_groupmax/R1"] == 100.0 and m["v2t_allcaps/R1"] == 100.0
    assert (m["num_captions"], m["num_videos"]) == (7, 4)
    sim = torch.zeros(7, 4)
    for row, k in enumerate([0, 2, 0, 1, 2, 2, 3]):
        sim[row, k] = 1
    expected = M.multi_caption_metrics(sim, ds.caption_to_video)
    assert {k: v for k, v in m.items() if k in expected} == expected
    assert "v2t_allcaps" in result.table and "t2v" in result.table


def test_square_evaluation_with_dsl_beside_raw():
    ds = dataset([["0"], ["1"], ["1"], ["3"]])  # caption of video 2 matches video 1
    result = evaluate_retrieval(OneHotModel(), ds, eval_args("--dsl"))
    m = result.metrics
    assert m["t2v/R1"] == 75.0 and m["t2v/MnR"] == 1.25 and "v2t/R1" in m
    assert "dsl/t2v/R1" in m and "dsl/v2t/R1" in m
    assert "dsl/t2v" in result.table and "\nt2v" in result.table


def test_legacy_flag_counts_ties_like_clip4clip():
    # caption 2 ("1") scores 1 on video 1 and 0 on its own video 2, tied with videos 0 and 3:
    # strict rank 2; legacy positions 2, 3, 4 (three entries)
    ds = dataset([["0"], ["1"], ["1"], ["3"]])
    legacy = evaluate_retrieval(OneHotModel(), ds, eval_args("--legacy_metrics")).metrics
    assert legacy["t2v/R1"] == pytest.approx(100 * 3 / 6) and legacy["t2v/MnR"] == pytest.approx((3 + 2 + 3 + 4) / 6)


def test_qb_norm_is_chosen_on_validation_and_reported_beside_raw():
    train = dataset([["0"], ["0"], ["1"], ["1"]], split="train")
    val = dataset([["0"], ["1"], ["2"], ["3"]], split="val")
    test = dataset([["0"], ["1"], ["1"], ["3"]])
    args = eval_args("--qb_norm", "--qb_norm_betas", "1", "10")
    model = OneHotModel()
    bank, params, grid = prepare_qb_norm(model, train, val, args)
    assert len(grid) == 2 and params[0] in (1.0, 10.0)
    m = evaluate_retrieval(model, test, args, bank=bank, qb_norm_params=params).metrics
    assert "t2v/R1" in m and "qbnorm/t2v/R1" in m and m["qbnorm/bank_size"] == 4
    with pytest.raises(ValueError, match="never on test"):
        prepare_qb_norm(model, train, test, args)
    with pytest.raises(ValueError, match="validation"):
        evaluate_retrieval(model, test, args)
