"""Orchestration as plan -> compute -> write: build (images -> store) and interpret (store -> labels).

The only layer that combines the model, the sources and the store.
"""
