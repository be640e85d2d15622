"""User-facing errors: one clear line, exit code 2, no traceback."""


class UserError(Exception):
    """Bad input or missing resources the user can fix. The CLI prints `error: <msg>` and exits 2."""


class UnsupportedModel(UserError):
    """The architecture cannot be decomposed exactly (attention pooling, LayerScale, non-ViT...)."""


class WeightsMissing(UserError):
    """Pretrained weights are not available offline."""
