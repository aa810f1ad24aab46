"""Model factory: any timm model name, plus ``swift_cnn`` (registered in timm's own registry)."""

from __future__ import annotations

import os

from torch import nn

__all__ = ["create_model", "create_lm", "SwiftCNN"]


def create_lm(name: str, vocab_size: int, seq_len: int, checkpoint: str | None = None, **kwargs) -> nn.Module:
    """A transformers causal LM: ``gpt2`` (built from a GPT2Config: vocab, ``n_positions=seq_len`` and
    ``kwargs`` such as n_layer, n_embd, n_head — never downloaded) or a local checkpoint directory."""
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    path = checkpoint or (name if os.path.isdir(name) else None)
    if path:
        if not os.path.isdir(path):
            raise ValueError(f"model.checkpoint: {path} is not a local transformers checkpoint directory")
        return AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    if name != "gpt2":
        raise ValueError(f"model.name: {name!r} is not a language model here; use gpt2 (sized by model.kwargs: "
                         "n_layer, n_embd, n_head, …) or a local checkpoint directory")
    known = set(GPT2Config().to_dict())
    unknown = sorted(k for k in kwargs if k not in known)
    if unknown:  # GPT2Config would keep them as attributes and silently ignore them
        raise ValueError(f"model.kwargs: GPT2Config has no {unknown[0]!r} (e.g. n_layer, n_embd, n_head, "
                         "resid_pdrop)")
    try:
        config = GPT2Config(vocab_size=vocab_size, n_positions=seq_len, **kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"model.kwargs: {e}") from None
    return GPT2LMHeadModel(config)


class SwiftCNN(nn.Module):
    """A small CNN for 8×8 to 32×32 images: 3 conv blocks, global average pool, linear head."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, width: int = 32, drop_rate: float = 0.0,
                 stem_stride: int = 1):
        super().__init__()
        w = width

        def block(i, o, stride=1):
            return nn.Sequential(nn.Conv2d(i, o, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(o),
                                 nn.ReLU(inplace=True))

        self.features = nn.Sequential(block(in_chans, w, stem_stride), block(w, 2 * w), nn.MaxPool2d(2), block(2 * w, 4 * w),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(4 * w, num_classes)
        self.num_classes = num_classes

    def forward(self, x):
        return self.head(self.drop(self.features(x)))


def _register():
    from timm.models import register_model
    from timm.models._registry import is_model

    if not is_model("swift_cnn"):
        @register_model
        def swift_cnn(pretrained: bool = False, **kwargs) -> SwiftCNN:
            """swift_scale's small CNN (no pretrained weights)."""
            if pretrained:
                raise ValueError("swift_cnn has no pretrained weights")
            for timm_option in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):  # timm's, not ours
                kwargs.pop(timm_option, None)
            return SwiftCNN(**kwargs)


def create_model(name: str, num_classes: int, in_chans: int = 1, checkpoint: str | None = None,
                 **kwargs) -> nn.Module:
    """``timm.create_model(name, pretrained=False, num_classes, in_chans)``; weights from a local file if given.

    Raises ValueError naming the model when timm does not know it (with close matches).
    """
    import timm

    _register()
    if not timm.models.is_model(name):
        import difflib

        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
        raise ValueError(f"model.name: unknown model {name!r}{hint}")
    try:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)
    except TypeError as e:
        raise ValueError(f"model.kwargs: {name} does not accept {sorted(kwargs)} ({e})") from None
    if checkpoint:
        load_weights(model, checkpoint, name)
    return model


def load_weights(model: nn.Module, checkpoint: str, name: str) -> None:
    """Load ``model.checkpoint`` into ``model`` (missing keys allowed, e.g. a new head); ValueError naming the
    field for a file that is not weights or does not fit the architecture."""
    from swift_scale.io import load_state_dict

    state = load_state_dict(checkpoint, name="model.checkpoint", fix="give a state_dict saved with torch.save")
    try:
        _, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        first = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), str(e).splitlines()[0])
        raise ValueError(f"model.checkpoint: {checkpoint} does not fit {name} ({first[:160]})") from None
    if unexpected:
        raise ValueError(f"model.checkpoint: {checkpoint} does not fit {name} (unexpected keys {unexpected[:3]})")
