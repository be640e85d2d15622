"""CLIP-InterpreT engine: exact per-head decomposition, interpretation and scores for CLIP ViTs.

Layers (imports go one way, `docs/architecture.md`): cli -> pipeline -> session ->
store | sources | model -> core -> errors. From Python:

    from engine import open_store      # the notebook API (engine.session.notebook)
    s = open_store("artifacts/demo")

`import engine` stays light: `open_store` is imported on first use.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "open_store"]


def __getattr__(name: str):
    if name == "open_store":
        from engine.session.notebook import open_store

        return open_store
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
