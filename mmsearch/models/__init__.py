"""Encoders. The plugin API: :class:`mmsearch.models.base.Encoder` (with ``ImageInput`` and
``AudioInput``), :func:`mmsearch.models.registry.register` and
:func:`mmsearch.models.registry.load_encoder`; see ``registry`` for the entry-point group.

Kept empty so that importing the registry (the CLI does at start-up) imports nothing heavy.
"""
