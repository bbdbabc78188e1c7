"""``--datatype webdataset``: training pairs streamed from tar shards (``--train_shards``), written by
``preprocess/make_shards.py`` from any other registered dataset and read by ``dataloaders/shards.py``.
There is no list of records to build: the engine streams the shards; evaluation uses another
benchmark (``main_pretrain.py --eval_datatype``)."""
from __future__ import annotations

from dataloaders.datasets.common import AnnotationParser
from dataloaders.datasets.registry import register_dataset


@register_dataset("webdataset")
class WebDatasetShards(AnnotationParser):
    splits = ("train",)
    expected_files = "--train_shards DIR/{000000..000099}.tar with DIR/shards.json (preprocess/make_shards.py)"

    def __init__(self, args):  # no annotation folder: the shards are the data
        self.args = args

    def records(self, split: str):
        raise self.error(f"the {split} split is streamed from --train_shards, not listed; evaluate on another "
                         "benchmark (--eval_datatype, --eval_data_path)")
