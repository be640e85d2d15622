"""CLIP-InterpreT engine: exact per-head decomposition, interpretation and scores for CLIP ViTs.

Layers (imports go one way): math modules (`decompose`, `textspan`, `labels`, `scores`,
`world`, `analysis`) touch no files; `registry` is the one module that touches open_clip
internals; `store`/`schema`/`imageio` hold all I/O; `commands/` are thin CLI wrappers.
"""

__version__ = "0.1.0"
