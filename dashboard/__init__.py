"""The CLIP-InterpreT dashboard: a Streamlit multipage app over a store, read-only.

`streamlit run dashboard/Home.py`; the modules are imported as `dashboard.*` (the entrypoint
puts the repository root on the import path, once). Map: `dashboard/README.md`.
"""
