"""One annotation parser per benchmark, registered by ``--datatype`` name."""
from dataloaders.datasets.registry import get_parser, list_datasets, register_dataset
from dataloaders.datasets import (activitynet, chvtt, didemo, frozen, generic, lsmdc, msrvtt, msvd,  # noqa: F401
                                  qa, vatex, webdataset, webvid)  # (registers)

__all__ = ["get_parser", "list_datasets", "register_dataset"]
