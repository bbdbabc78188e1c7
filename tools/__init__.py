"""Command-line tools on top of a trained model: index a video folder, search it from the shell or a
web page, and pictures of what a model does (see docs/tools.md).

    python -m tools.index --checkpoint outputs/run/model_final.pt --videos ~/videos --out ~/videos.index
    python -m tools.search ~/videos.index "a dog catches a frisbee" --topk 5 [--html out.html]
    python -m tools.serve ~/videos.index --port 8000
    python -m tools.visualize retrievals|curves|gap ...

The tools import the engine and the model code inside the functions that use them (each such import
is marked ``# start-up``): ``--help``, a wrong flag and the search page's first answer then load about
1,200 modules instead of 1,700 (pandas, every method head, the converters).
"""
