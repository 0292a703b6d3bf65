"""Model zoo: name a model by string.

``create("cifar_resnet_20")``, ``create("tv:resnet18")``,
``create("timm:vit_tiny_patch16_224", depth=6)``,
``create("hf:llama", num_hidden_layers=4, hidden_size=64)`` (Hugging Face transformers
from a config class: the ``hf`` extra). Input channels and class count are
arguments so that a model follows its dataset (Fashion-MNIST: ``in_chans=1,
num_classes=10``). Depth overrides are plain constructor keyword arguments.
A transferred ticket of an ``hf:`` model is written as a Hugging Face folder by
``hf_folder.save_pretrained`` (``elastigraph.save_pretrained``).
"""

from __future__ import annotations

import contextlib
import inspect
import re
from typing import Any, Callable

from torch import nn

from ..errors import ModelNameError
from .cifar_mobilenet import cifar_mobilenet_v2
from .cifar_resnet import CifarResNet
from .cifar_vgg import CifarVGG
from .mlp import MLP, mlp

_BUILTIN: dict[str, Callable[..., nn.Module]] = {}
MAX_NAME_DEPTH = 6002
"""Largest depth a built-in name may carry (``cifar_resnet_<depth>``: 1000 blocks)."""


def register(pattern: str):
    """Register a constructor for names matching the regex ``pattern`` (full match).
    The constructor receives the match groups as ``*args`` and ``in_chans``,
    ``num_classes`` and the overrides as keywords."""

    def deco(fn):
        _BUILTIN[pattern] = fn
        return fn

    return deco


@register(r"cifar_resnet_(\d+)")
def _cifar_resnet(depth: str, *, in_chans: int, num_classes: int, **kw: Any) -> nn.Module:
    return CifarResNet(int(depth), num_classes=num_classes, in_chans=in_chans, **kw)


@register(r"cifar_vgg_(\d+)")
def _cifar_vgg(depth: str, *, in_chans: int, num_classes: int, **kw: Any) -> nn.Module:
    return CifarVGG(int(depth), num_classes=num_classes, in_chans=in_chans, **kw)


@register(r"mlp_(\d+(?:_\d+)*)")
def _mlp_widths(widths: str, *, in_chans: int, num_classes: int, img_size: int = 28, **kw: Any) -> nn.Module:
    """``mlp_300_100``: one hidden layer per number (open_lth's ``mnist_lenet_300_100``)."""
    return MLP([int(w) for w in widths.split("_")], num_classes=num_classes, in_chans=in_chans, img_size=img_size, **kw)


@register(r"mlp")
def _mlp(*, in_chans: int, num_classes: int, img_size: int = 28, **kw: Any) -> nn.Module:
    """``mlp?depth=3&width=300``: ``depth`` hidden layers of ``width`` units."""
    return mlp(num_classes=num_classes, in_chans=in_chans, img_size=img_size, **kw)


@register(r"cifar_mobilenet_v2")
def _cifar_mobilenet_v2(*, in_chans: int, num_classes: int, **kw: Any) -> nn.Module:
    return cifar_mobilenet_v2(num_classes=num_classes, in_chans=in_chans, **kw)


def _tv(name: str, *, in_chans: int, num_classes: int, **kw: Any) -> nn.Module:
    import torchvision.models as tvm

    try:
        builder = tvm.get_model_builder(name)
    except ValueError as e:
        raise ModelNameError(f"torchvision has no model {name!r}; see torchvision.models.list_models()") from e
    if kw.get("weights"):
        raise ModelNameError("elastigraph never downloads weights: load a local state_dict instead")
    img_size = kw.pop("img_size", None)
    if img_size is not None and "image_size" in inspect.signature(_tv_class(builder)).parameters:
        kw.setdefault("image_size", img_size)
    try:
        model = builder(weights=None, num_classes=num_classes, **kw)
    except TypeError as e:
        raise ModelNameError(f"bad overrides for 'tv:{name}': {e}") from e
    if in_chans != 3:
        _set_input_channels(model, in_chans)
    return model


def _tv_class(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """The model class a torchvision builder instantiates (to read its keyword names)."""
    ret = inspect.signature(builder).return_annotation
    return ret if isinstance(ret, type) else builder


def _set_input_channels(model: nn.Module, in_chans: int) -> None:
    """Replace the first conv of a torchvision model so it takes ``in_chans`` channels."""
    for mname, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            new = nn.Conv2d(in_chans, m.out_channels, m.kernel_size, m.stride, m.padding,
                            m.dilation, m.groups, m.bias is not None)
            parent = model.get_submodule(mname.rpartition(".")[0]) if "." in mname else model
            setattr(parent, mname.rpartition(".")[2], new)
            return


def _timm(name: str, *, in_chans: int, num_classes: int, **kw: Any) -> nn.Module:
    import timm

    if not timm.is_model(name):
        raise ModelNameError(f"timm has no model {name!r}; see timm.list_models('{name.split('_')[0]}*')")
    if kw.pop("pretrained", False):
        raise ModelNameError("elastigraph never downloads weights: load a local state_dict instead")
    for key in ("checkpoint_path", "pretrained_cfg", "pretrained_cfg_overlay"):
        if key in kw:
            raise ModelNameError(f"'timm:{name}': the {key!r} override is not supported (timm would unpickle "
                                 "the file); load weights from a local safetensors state dict instead "
                                 "(CLI: --weights / --src-weights)")
    img_size = kw.pop("img_size", None)
    if img_size is not None:
        # ViT-style models take img_size; convolutional ones are size-agnostic and would
        # reject it, so it is only passed where the model's constructor accepts it.
        try:
            return timm.create_model(name, pretrained=False, in_chans=in_chans, num_classes=num_classes,
                                     img_size=img_size, **kw)
        except TypeError as e:
            if "img_size" not in str(e):
                raise ModelNameError(f"bad overrides for 'timm:{name}': {e}") from e
    try:
        return timm.create_model(name, pretrained=False, in_chans=in_chans, num_classes=num_classes, **kw)
    except TypeError as e:
        raise ModelNameError(f"bad overrides for 'timm:{name}': {e}") from e


@contextlib.contextmanager
def _constructor_errors(name: str, overrides: dict[str, Any]):
    """Whatever a constructor raises on values it cannot build (negative widths, a
    dimension not divisible by the head count, a checkpoint file that is missing ...)
    becomes one :class:`ModelNameError` naming the model and its overrides."""
    try:
        yield
    except ModelNameError:
        raise
    except (TypeError, ValueError, AssertionError, RuntimeError, OSError, KeyError, IndexError,
            ZeroDivisionError, OverflowError, AttributeError, NotImplementedError, RecursionError) as e:
        what = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        given = ", ".join(f"{k}={v!r}" for k, v in overrides.items()) or "no overrides"
        raise ModelNameError(f"model {name!r} ({given}) cannot be built: {what}; check the overrides "
                             "against the model's constructor") from None


_HF_TASKS = {
    "causal-lm": "AutoModelForCausalLM",
    "masked-lm": "AutoModelForMaskedLM",
    "sequence-classification": "AutoModelForSequenceClassification",
    "base": "AutoModel",
}


def _hf(spec: str, *, in_chans: int, num_classes: int, **kw: Any) -> nn.Module:
    """``hf:<model_type>[/<task>]``: a Hugging Face transformers model built from its config
    class with random weights (nothing is downloaded). ``overrides`` are config fields
    (``num_hidden_layers=4``, ``hidden_size=64``, GPT-2's ``n_layer``); a name the config
    does not have is an error (transformers would silently keep it). ``task``: one of
    ``_HF_TASKS``; default ``causal-lm`` where the model type has one, else ``base``.
    ``num_classes`` sets ``num_labels`` for sequence classification; ``in_chans`` and
    ``img_size`` do not apply to text models and are ignored."""
    try:
        import transformers
    except ImportError as e:
        raise ModelNameError(f"'hf:{spec}' needs Hugging Face transformers: pip install 'elastigraph[hf]'") from e
    model_type, _, task = spec.partition("/")
    kw.pop("img_size", None)
    if kw.pop("pretrained", False) or kw.get("weights"):
        raise ModelNameError("elastigraph never downloads weights: load a local state_dict instead")
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if model_type not in CONFIG_MAPPING_NAMES:
        close = [t for t in CONFIG_MAPPING_NAMES if t.startswith(model_type[:3])][:5]
        raise ModelNameError(f"transformers has no model type {model_type!r} (similar: {close}); "
                             "use a config model_type such as 'hf:gpt2', 'hf:llama' or 'hf:bert'")
    if not task:
        task = "causal-lm" if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES else "base"
    if task not in _HF_TASKS:
        raise ModelNameError(f"unknown task {task!r} in 'hf:{spec}'; valid: {sorted(_HF_TASKS)}")
    default = transformers.AutoConfig.for_model(model_type)
    unknown = [k for k in kw if not hasattr(default, k)]
    if unknown:
        knobs = [k for k in ("num_hidden_layers", "n_layer", "num_layers", "hidden_size", "n_embd") if hasattr(default, k)]
        raise ModelNameError(f"'hf:{spec}': {model_type} configs have no field(s) {unknown}; depth/size fields: {knobs}")
    if task == "sequence-classification":
        kw.setdefault("num_labels", num_classes)
    vocab = kw.get("vocab_size")
    if isinstance(vocab, int):  # a smaller vocabulary (bytes: 256): special tokens outside it mean nothing
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            tok = getattr(default, key, None)
            if key not in kw and isinstance(tok, int) and tok >= vocab:
                kw[key] = None
    config = transformers.AutoConfig.for_model(model_type, **kw)
    auto = getattr(transformers, _HF_TASKS[task])
    try:
        return auto.from_config(config)
    except ValueError as e:
        raise ModelNameError(f"'hf:{spec}': transformers cannot build a {task} model for {model_type}: "
                             f"{str(e).splitlines()[0]}") from e


def create(name: str, *, in_chans: int = 3, num_classes: int = 10, **overrides: Any) -> nn.Module:
    """Build the model called ``name`` with random weights.

    ``name`` is a built-in name (``cifar_resnet_56``), ``tv:<torchvision name>``,
    ``timm:<timm name>`` or ``hf:<transformers model type>[/<task>]`` (built from its
    config class, see :func:`_hf`: ``hf:llama``, ``hf:bert/sequence-classification``);
    ``overrides`` go to the constructor (``depth=6``,
    ``depths=(3, 3, 27, 3)``, ``layers=[2, 2, 2, 2]`` ...). ``img_size`` is accepted
    for every name: passed on to constructors that take it (timm ViTs; torchvision ViTs
    as ``image_size``), ignored by the size-agnostic convolutional models.
    """
    if not isinstance(name, str) or not name:
        raise ModelNameError(f"model name must be a non-empty string, got {name!r}")
    for what, v in (("in_chans", in_chans), ("num_classes", num_classes)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ModelNameError(f"{name!r}: {what} must be a positive integer, got {v!r}")
    model = _build(name, in_chans, num_classes, overrides)
    empty = [n for n, p in model.named_parameters() if p.numel() == 0]
    if empty:  # a zero width/size override builds layers with no weights: nothing to train or prune
        given = ", ".join(f"{k}={v!r}" for k, v in overrides.items()) or "no overrides"
        raise ModelNameError(f"model {name!r} ({given}) has {len(empty)} empty parameter(s) ({empty[:3]}): a width, "
                             "channel or size override of 0 builds layers without weights; use positive values")
    return model


def _build(name: str, in_chans: int, num_classes: int, overrides: dict[str, Any]) -> nn.Module:
    """The model :func:`create` describes, as its constructor builds it."""
    with _constructor_errors(name, overrides):
        if name.startswith("tv:"):
            return _tv(name[3:], in_chans=in_chans, num_classes=num_classes, **overrides)
        if name.startswith("timm:"):
            return _timm(name[5:], in_chans=in_chans, num_classes=num_classes, **overrides)
        if name.startswith("hf:"):
            return _hf(name[3:], in_chans=in_chans, num_classes=num_classes, **overrides)
        for pattern, fn in _BUILTIN.items():
            m = re.fullmatch(pattern, name)
            if m and any(g.isdigit() and int(g) > MAX_NAME_DEPTH for g in m.groups()):
                raise ModelNameError(f"{name!r}: depth {max(int(g) for g in m.groups() if g.isdigit()):,} is beyond "
                                     f"{MAX_NAME_DEPTH:,} (the deepest CIFAR ResNet published has 1202 layers)")
            if m:
                img_size = overrides.pop("img_size", None)
                # most built-in models are input-size agnostic; the MLPs take the image size
                if img_size is not None and "img_size" in inspect.signature(fn).parameters:
                    overrides["img_size"] = img_size
                try:
                    return fn(*m.groups(), in_chans=in_chans, num_classes=num_classes, **overrides)
                except TypeError as e:
                    raise ModelNameError(f"bad overrides for {name!r}: {e}") from e
    raise ModelNameError(
        f"unknown model {name!r}; built-in names: {available()}, or prefix a torchvision "
        "name with 'tv:', a timm name with 'timm:' or a Hugging Face transformers model type with 'hf:'"
    )


def available() -> list[str]:
    """Built-in name patterns (regexes) known to :func:`create`."""
    return sorted(_BUILTIN)


__all__ = ["create", "register", "available", "CifarResNet", "CifarVGG", "cifar_mobilenet_v2", "MLP", "mlp"]
