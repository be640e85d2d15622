"""Math on tensors and arrays only: decomposition, TextSpan, labels, scores, ground truth, analyses.

No file I/O, no open_clip, no Streamlit (enforced by import-linter contracts in pyproject.toml).
"""
