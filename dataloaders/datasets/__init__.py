"""One annotation parser per benchmark, registered by ``--datatype`` name."""
from dataloaders.datasets.registry import get_parser, list_datasets, register_dataset
from dataloaders.datasets import (activitynet, chvtt, didemo, generic, lsmdc, msrvtt, msvd, vatex,  # noqa: F401
                                  webdataset, webvid)  # (registers)

__all__ = ["get_parser", "list_datasets", "register_dataset"]
