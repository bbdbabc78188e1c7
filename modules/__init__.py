"""UniVTR models: the CLIP backbone (``modules.clip``), method heads (``modules.heads``), metrics."""


def build_model(args):
    """The model (a ``RetrievalHead`` holding CLIP) for a set of parsed flags."""
    # Imported here, not at the top (start-up and layering): every `import modules.<part>` runs this file
    # first, and the backbones must load without the heads.
    from modules.factory import build_model as _build

    return _build(args)
