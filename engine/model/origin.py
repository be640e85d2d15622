"""Where a model's checkpoint comes from, in words, for the weights-missing message.

open_clip's pretrained config knows each tag's Hugging Face hub repo (and file) or download URL;
an `hf-hub:` spec names its repo itself. Offline, the user needs exactly this to fetch the file
elsewhere, plus the one flag that lets them try the tool meanwhile (`--random-weights`).
"""

from __future__ import annotations

import os

from engine.model.specs import ModelSpec, _open_clip

HF_URL = "https://huggingface.co/"
HF_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # open_clip's defaults


def checkpoint_origin(s: ModelSpec) -> str:
    """'the Hugging Face hub, https://huggingface.co/ORG/REPO (file F)' or 'URL', or ''."""
    if s.kind == "hf-hub":
        repo = s.arch[len("hf-hub:") :].strip("/")
        return f"the Hugging Face hub, {HF_URL}{repo} (open_clip_config.json and {HF_FILES[0]})"
    if s.kind != "tag":
        return ""
    cfg = _open_clip().get_pretrained_cfg(s.arch, s.tag) or {}
    hub, url = cfg.get("hf_hub", ""), cfg.get("url", "")
    if hub:
        repo, filename = os.path.split(hub)  # open_clip's 'org/repo/' or 'org/repo/file'
        files = filename or " or ".join(HF_FILES)
        return f"the Hugging Face hub, {HF_URL}{repo} (file {files})"  # open_clip's first choice
    return url


def weights_missing_message(s: ModelSpec) -> str:
    """One line: not here, where from, how to use the file once fetched, how to try meanwhile."""
    origin = checkpoint_origin(s)
    came = f" (they come from {origin})" if origin else ""
    if s.kind == "hf-hub":
        use = "put the repo's files in a folder and use --model local-dir:/path/to/folder"
        try_ = "--model ViT-B-32 --random-weights (`python -m engine models` lists the others)"
    else:
        use = f"put the checkpoint file anywhere and use --model {s.arch}:/path/to/{HF_FILES[0]}"
        try_ = f"--model {s.raw} --random-weights"
    from huggingface_hub import constants

    return (
        f"weights for {s.raw} are not on this machine and could not be downloaded{came}; {use} "
        f"(or fill the Hugging Face cache, {constants.HF_HUB_CACHE}, on a machine with network); "
        f"to try the tool meanwhile at random init: {try_}"
    )
