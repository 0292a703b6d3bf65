"""Coverage: which third-party model families elastigraph stretches and squeezes correctly.

Each family is built at two depths from its library's public constructors (timm,
torchvision, and Hugging Face transformers when installed), with small widths where the
constructor allows, and a random mask is transferred both ways (A -> B stretch, B -> A
squeeze). Every target tensor is then checked against the source tensor the ticket
gives it, independently of the library's own analysis:

* role: the two names are the same once block indices are dropped (``blocks.#.mlp.fc1``);
* one block position: the names differ in at most one index, and only inside a container
  whose length differs between the two models (so never across stages);
* one source block per target block: all tensors of a target block come from one source
  block (the container indices, and timm's ``group_matcher`` groups where available);
* fixed parts (stem, head, tensors outside any stretched container) map to themselves.

Each case ends OK, ERROR (an elastigraph error: its message says why), CRASH (another
exception: not a clear error) or WRONG (a check failed: the most serious outcome). The
table goes to stdout and ``--md``; every result (with timings and the capture used) to
JSON. Results are appended to ``OUT.jsonl`` as families finish: a rerun skips families
already there (``--force`` to redo them).

    python benchmarks/coverage.py --md docs/coverage.md           # everything (about 20 min on 2 shared cores)
    python benchmarks/coverage.py --jobs 2 --timeout 240
    python benchmarks/coverage.py --families 'timm:vit*,tv:*,hf:*' --force
    python benchmarks/coverage.py --list                          # the families and their depths
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import fnmatch
import json
import os
import platform
import re
import signal
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KNOBS = ("depth", "depths", "layers", "num_blocks", "stage_blocks", "block_repeats", "num_layers",
         "stage_depths", "n_blocks", "blocks", "depths_per_stage", "levels", "k_sec", "block_config",
         "num_blocks_list", "block_per_stage", "stages_repeats", "stages")
SIZE_WORDS = ("atto", "femto", "pico", "nano", "xxs", "xxtiny", "xtiny", "tiny", "xs", "mini", "tn", "t",
              "small", "s", "b0", "m", "medium", "base", "b", "large", "l", "huge", "h", "giant", "g")


@dataclasses.dataclass
class Family:
    key: str                      # "timm:vision_transformer", "tv:resnet", "hf:gpt2"
    name: str                     # the model built (timm name, class name, model type)
    build: Callable[[str], Any]   # "a" (shallow) / "b" (deep) -> nn.Module
    knob: str                     # e.g. "depths (2, 2, 2, 2) -> (3, 3, 3, 3)"
    example_input: Any = None
    restep: Callable[[int, int], "Family"] | None = None  # (step, lo): asked again, see run_family


# ---------------------------------------------------------------------------- depth variants


def _two_depths(v: Any, step: int = 1, lo: int = 0) -> tuple[Any, Any] | None:
    """A shallow and a deep value for a depth knob: every stage capped at 2 blocks (and
    raised to ``lo``), then ``step`` more blocks in each stage that had at least 2 (all of
    them if none had, or if ``lo`` raised them)."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):  # one number for the whole model (ViT's depth, RegNet's total)
        a = max(min(v, 4), lo)
        return a, a + step
    if isinstance(v, (tuple, list)) and v and all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        a = [max(min(x, 2), lo) for x in v]
        grow = [x >= 2 for x in v] if any(x >= 2 for x in v) and not lo else [True] * len(v)
        b = [x + step if g else x for x, g in zip(a, grow)]
        return type(v)(a), type(v)(b)
    return None


def _cfg_variants(cfg: Any, step: int = 1, lo: int = 0) -> tuple[Any, Any, str] | None:
    """Depth variants of a dataclass model config: a knob field, or ``blocks`` of block
    configs with a depth ``d`` (timm's ByoModelCfg)."""
    if isinstance(cfg, dict):
        for k in KNOBS:
            if k in cfg and (tw := _two_depths(cfg[k], step, lo)) is not None:
                return dict(cfg, **{k: tw[0]}), dict(cfg, **{k: tw[1]}), f"model_cfg[{k!r}] {tw[0]} -> {tw[1]}"
        return None
    if not dataclasses.is_dataclass(cfg):
        return None
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v) and (inner := _cfg_variants(v, step, lo)) is not None:  # CspModelCfg.stages
            return (dataclasses.replace(cfg, **{f.name: inner[0]}), dataclasses.replace(cfg, **{f.name: inner[1]}),
                    f"model_cfg.{f.name}.{inner[2].split('.', 1)[-1]}")
        if f.name in KNOBS:
            v = getattr(cfg, f.name)
            tw = _two_depths(v, step, lo)
            if tw is not None:
                return (dataclasses.replace(cfg, **{f.name: tw[0]}), dataclasses.replace(cfg, **{f.name: tw[1]}),
                        f"model_cfg.{f.name} {tw[0]} -> {tw[1]}")
            if isinstance(v, (tuple, list)) and v and all(dataclasses.is_dataclass(b) and hasattr(b, "d") for b in v):
                tw = _two_depths([b.d for b in v], step, lo)
                if tw is None:
                    return None
                mk = lambda ds: dataclasses.replace(cfg, **{f.name: tuple(dataclasses.replace(b, d=d) for b, d in zip(v, ds))})  # noqa: E731
                return mk(tw[0]), mk(tw[1]), f"model_cfg.{f.name}[].d {tuple(tw[0])} -> {tuple(tw[1])}"
    return None


def _stage_lists(v: Any, step: int = 1) -> tuple[list, list] | None:
    """Depth variants of a list of stages, each a list of block descriptions (timm's
    EfficientNet / MobileNetV3 ``block_args``): stages cut to their first 2 blocks, then
    the stages that had 2 or more get a copy of their last block."""
    if not (isinstance(v, (list, tuple)) and v and all(isinstance(st, (list, tuple)) and st for st in v)):
        return None
    a = [list(st[:2]) for st in v]
    b = [list(st) + [copy.deepcopy(st[-1]) for _ in range(step)] if len(orig) >= 2 else list(st) for st, orig in zip(a, v)]
    return a, b


# ---------------------------------------------------------------------------- families: timm


class _Captured(Exception):
    pass


def _size_rank(name: str) -> tuple:
    parts = name.split("_")
    # a size word, alone or with a number (``s18``, ``b36``, ``m1``): the smallest wins
    words = [p if p in SIZE_WORDS else p.rstrip("0123456789") for p in parts]
    rank = min((SIZE_WORDS.index(w) for w in words if w in SIZE_WORDS), default=len(SIZE_WORDS))
    big_input = any(p.isdigit() and int(p) >= 256 for p in parts)
    return (big_input, rank, len(name), name)


def _timm_capture(name: str) -> tuple[Any, str, dict]:
    """The class, variant and keyword arguments timm's entrypoint ``name`` passes to
    ``build_model_with_cfg`` (captured without building the model)."""
    import timm
    from timm.models._registry import _model_to_module

    mod = sys.modules[f"timm.models.{_model_to_module[name]}"]
    orig = mod.build_model_with_cfg
    seen: dict[str, Any] = {}

    def spy(model_cls, variant, pretrained, **kwargs):
        seen.update(cls=model_cls, variant=variant, kwargs=kwargs)
        raise _Captured

    mod.build_model_with_cfg = spy
    try:
        timm.create_model(name, pretrained=False, num_classes=10)
    except _Captured:
        pass
    finally:
        mod.build_model_with_cfg = orig
    if not seen:
        raise RuntimeError(f"timm entrypoint {name} does not go through build_model_with_cfg")
    return seen["cls"], seen["variant"], seen["kwargs"]


def _timm_candidates(names: list[str], step: int = 1, lo: int = 0):
    """(name, class, variant, shallow kwargs, deep kwargs, knob description) for the
    family's models with a depth knob, smallest first."""
    for name in sorted(names, key=_size_rank)[:8]:
        try:
            cls, variant, kwargs = _timm_capture(name)
        except Exception:
            continue
        for k in KNOBS:
            if k in kwargs and (tw := _two_depths(kwargs[k], step, lo)) is not None:
                yield name, cls, variant, dict(kwargs, **{k: tw[0]}), dict(kwargs, **{k: tw[1]}), f"{k} {tw[0]} -> {tw[1]}"
                break
        else:
            if (lists := _stage_lists(kwargs.get("block_args"), step)) is not None:
                yield (name, cls, variant, dict(kwargs, block_args=lists[0]), dict(kwargs, block_args=lists[1]),
                       f"block_args: stages of <= 2 blocks, then {step} more each")
            elif "model_cfg" in kwargs and (cv := _cfg_variants(kwargs["model_cfg"], step, lo)):
                yield name, cls, variant, dict(kwargs, model_cfg=cv[0]), dict(kwargs, model_cfg=cv[1]), cv[2]
                cfg = kwargs["model_cfg"]
                if dataclasses.is_dataclass(cfg) and isinstance(getattr(cfg, "depth", None), int) and cfg.depth > 4:
                    # a whole-model depth that the constructor spreads over its stages (RegNet):
                    # the model's own depth and one more, where 4 is too few
                    yield (name, cls, variant, dict(kwargs, model_cfg=dataclasses.replace(cfg, depth=cfg.depth)),
                           dict(kwargs, model_cfg=dataclasses.replace(cfg, depth=cfg.depth + step)),
                           f"model_cfg.depth {cfg.depth} -> {cfg.depth + step}")


def _timm_family(module: str, names: list[str], step: int = 1, lo: int = 0) -> Family:
    """The family's smallest model whose two depth variants both build (up to 4 tried)."""
    from timm.models import _builder

    cands = list(_timm_candidates(names, step, lo))
    fam = Family(f"timm:{module}", sorted(names, key=_size_rank)[0], _no_knob, "",
                 restep=lambda k, lo: _timm_family(module, names, k, lo))
    if not cands:
        return fam
    built: dict[str, Any] = {}

    def build(which: str):
        if not built:
            errors = []
            for name, cls, variant, a_kw, b_kw, desc in cands[:4]:
                fam.name, fam.knob = name, desc
                try:
                    # fresh copies: timm's builders consume their block descriptions (pop keys)
                    built["a"] = _builder.build_model_with_cfg(cls, variant, False, **copy.deepcopy(a_kw))
                    built["b"] = _builder.build_model_with_cfg(cls, variant, False, **copy.deepcopy(b_kw))
                    break
                except Exception as e:  # this model's constructor rejects the variant: try the next
                    built.clear()
                    errors.append(f"{name}: {_first_line(e, 120)}")
            else:
                raise RuntimeError("; ".join(errors))
        return built.pop(which)

    fam.build = build
    fam.name, fam.knob = cands[0][0], cands[0][5]
    return fam


class NoKnob(Exception):
    pass


def _no_knob(which: str):
    raise NoKnob("no depth knob found in the constructor's arguments")


def timm_families() -> list[Family]:
    try:
        import timm
        from timm.models._registry import _model_to_module
    except ImportError:
        return []
    by_module: dict[str, list[str]] = {}
    for n in timm.list_models():
        by_module.setdefault(_model_to_module[n], []).append(n)
    return [_lazy(f"timm:{m}", lambda m=m, ns=ns: _timm_family(m, ns)) for m, ns in sorted(by_module.items())]


# ---------------------------------------------------------------------------- families: torchvision


def tv_families() -> list[Family]:
    try:
        import torchvision.models as tvm
    except ImportError:
        return []
    from torchvision.models import convnext, efficientnet, mobilenetv2, regnet, resnet, swin_transformer
    from torchvision.models import vision_transformer

    def two(fn: Callable[[Any], Any], a: Any, b: Any) -> Callable[[str], Any]:
        return lambda which: fn(a if which == "a" else b)

    fams = [
        ("tv:resnet", "ResNet(BasicBlock)", two(lambda l: resnet.ResNet(resnet.BasicBlock, l, num_classes=10),
                                                [2, 2, 2, 2], [3, 4, 3, 3]), "layers [2,2,2,2] -> [3,4,3,3]"),
        ("tv:resnet_bottleneck", "ResNet(Bottleneck)", two(
            lambda l: resnet.ResNet(resnet.Bottleneck, l, num_classes=10, width_per_group=16),
            [2, 2, 2, 2], [3, 3, 3, 3]), "layers [2,2,2,2] -> [3,3,3,3]"),
        ("tv:vgg", "vgg11_bn/13_bn", lambda w: (tvm.vgg11_bn if w == "a" else tvm.vgg13_bn)(num_classes=10),
         "vgg11_bn -> vgg13_bn"),  # vgg11's first stages hold one conv each: asked again as 13 -> 16
        ("tv:vit", "VisionTransformer", two(lambda n: vision_transformer.VisionTransformer(
            image_size=32, patch_size=8, num_layers=n, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10), 3, 5),
         "num_layers 3 -> 5"),
        ("tv:swin", "SwinTransformer", two(lambda d: swin_transformer.SwinTransformer(
            patch_size=[4, 4], embed_dim=16, depths=d, num_heads=[1, 2, 2, 4], window_size=[4, 4], num_classes=10),
            [2, 2, 2, 2], [2, 2, 4, 2]), "depths [2,2,2,2] -> [2,2,4,2]"),
        ("tv:convnext", "ConvNeXt", two(lambda n: convnext.ConvNeXt(
            [convnext.CNBlockConfig(16, 32, n), convnext.CNBlockConfig(32, 64, n), convnext.CNBlockConfig(64, None, n)],
            num_classes=10), 2, 3), "num_layers 2 -> 3 per stage"),
        ("tv:mobilenet_v2", "MobileNetV2", two(lambda n: mobilenetv2.MobileNetV2(
            num_classes=10, width_mult=0.25,
            inverted_residual_setting=[[1, 16, 1, 1], [6, 24, n, 2], [6, 32, n, 2], [6, 64, n, 2], [6, 96, n, 1]]),
            2, 3), "n 2 -> 3 per row"),
        ("tv:efficientnet", "EfficientNet", two(lambda n: efficientnet.EfficientNet(
            [efficientnet.MBConvConfig(1, 3, 1, 16, 16, n), efficientnet.MBConvConfig(6, 3, 2, 16, 24, n),
             efficientnet.MBConvConfig(6, 5, 2, 24, 40, n)], dropout=0.2, num_classes=10), 2, 3),
         "num_layers 2 -> 3 per stage"),
        ("tv:regnet", "RegNet", two(lambda d: regnet.RegNet(
            regnet.BlockParams.from_init_params(depth=d, w_0=16, w_a=8.0, w_m=2.0, group_width=8), num_classes=10),
            6, 9), "depth 6 -> 9"),
        ("tv:densenet", "DenseNet", two(lambda b: tvm.DenseNet(growth_rate=8, block_config=b, num_init_features=16,
                                                                num_classes=10), (2, 2, 2, 2), (3, 3, 3, 3)),
         "block_config (2,2,2,2) -> (3,3,3,3)"),
        ("tv:maxvit", "MaxVit", two(lambda b: tvm.MaxVit(input_size=(64, 64), stem_channels=16, partition_size=2,
                                                          block_channels=[16, 32], block_layers=b, head_dim=8,
                                                          stochastic_depth_prob=0.0, num_classes=10),
                                    [2, 2], [3, 4]), "block_layers [2,2] -> [3,4]"),
        ("tv:shufflenet", "ShuffleNetV2", two(lambda r: tvm.ShuffleNetV2(r, [16, 24, 48, 96, 128], num_classes=10),
                                              [2, 2, 2], [3, 3, 3]), "stages_repeats [2,2,2] -> [3,3,3]"),
    ]
    out = [Family(k, n, b, d) for k, n, b, d in fams]
    out[2].restep = lambda step, lo: Family("tv:vgg", "vgg13_bn/16_bn", lambda w: (tvm.vgg13_bn if w == "a" else
                                                                              tvm.vgg16_bn)(num_classes=10),
                                            "vgg13_bn -> vgg16_bn")
    return out


# ---------------------------------------------------------------------------- families: transformers

HF_TYPES = ("gpt2", "llama", "bert", "distilbert", "roberta", "albert", "electra", "opt", "gpt_neox", "mistral",
            "qwen2", "phi", "gemma", "bloom", "t5", "vit",
            # more decoders and encoders (issue 20), each from a tiny config
            "qwen3", "phi3", "gemma2", "falcon", "gptj", "gpt_neo", "starcoder2", "olmo", "stablelm", "granite",
            "codegen", "biogpt", "xglm", "deberta-v2", "xlm-roberta", "roformer", "megatron-bert", "dinov2", "deit",
            "clip_vision_model", "siglip_vision_model")
# model types whose AutoModel needs inputs the benchmark does not make: their encoder alone
HF_ENCODERS = {"t5-encoder": "T5EncoderModel", "whisper-encoder": "WhisperModel"}
_HF_SMALL = {
    "hidden_size": 32, "n_embd": 32, "d_model": 32, "dim": 32, "embedding_size": 32, "word_embed_proj_dim": 32,
    "intermediate_size": 64, "n_inner": 64, "ffn_dim": 64, "d_ff": 64, "hidden_dim": 64,
    "num_attention_heads": 2, "n_head": 2, "n_heads": 2, "num_heads": 2, "num_key_value_heads": 2, "head_dim": 16,
    "d_kv": 16, "vocab_size": 100, "max_position_embeddings": 64, "n_positions": 64, "image_size": 32,
    "patch_size": 8,
}
_HF_DEPTH = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
_HF_EXTRA: dict[str, Callable[[int], dict]] = {  # config fields that must agree with the tiny sizes or the depth
    "gptj": lambda n: {"rotary_dim": 8},
    "codegen": lambda n: {"rotary_dim": 8},
    "gpt_neo": lambda n: {"attention_types": [[["global", "local"], n // 2]], "window_size": 4},
}


def hf_families() -> list[Family]:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return []
    return ([_lazy(f"hf:{t}", lambda t=t: _hf_family(t)) for t in HF_TYPES]
            + [_lazy(f"hf:{t}", lambda t=t: _hf_encoder_family(t)) for t in HF_ENCODERS])


def _hf_small(default: Any) -> dict[str, Any]:
    """The tiny sizes that ``default`` (a config) has as settable fields, and special token
    ids that fit the tiny vocabulary."""
    small = {k: v for k, v in _HF_SMALL.items()
             if hasattr(default, k) and not isinstance(getattr(type(default), k, None), property)}
    for k in ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id"):
        v = getattr(default, k, None)
        if isinstance(v, int) and v >= _HF_SMALL["vocab_size"]:
            small[k] = 0
    return small


def _hf_encoder_family(key: str) -> Family:
    """An encoder-decoder model's encoder on its own (T5, Whisper), 2 -> 4 layers."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    model_type = key.removesuffix("-encoder")
    default = transformers.AutoConfig.for_model(model_type)
    small = _hf_small(default)
    if model_type == "whisper":
        small.update(num_mel_bins=16, max_source_positions=16, max_target_positions=16, decoder_layers=1,
                     encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64)
        depth, example = "encoder_layers", torch.zeros(2, 16, 32)
    else:
        small["num_decoder_layers"] = 1
        depth, example = "num_layers", None

    def build(which: str):
        cfg = transformers.AutoConfig.for_model(model_type, **dict(small, **{depth: 2 if which == "a" else 4}))
        cls = getattr(transformers, HF_ENCODERS[key])
        m = cls(cfg)
        return m.get_encoder() if model_type == "whisper" else m

    return Family(f"hf:{key}", HF_ENCODERS[key] + (".encoder" if model_type == "whisper" else ""), build,
                  f"{depth} 2 -> 4", example)


def _hf_family(model_type: str) -> Family:
    import transformers

    transformers.logging.set_verbosity_error()
    default = transformers.AutoConfig.for_model(model_type)
    small = _hf_small(default)
    depth = next((k for k in _HF_DEPTH if isinstance(getattr(default, k, None), int)), None)
    if depth is None:
        return Family(f"hf:{model_type}", model_type, _no_knob, "")
    extra = {"num_decoder_layers": None} if hasattr(default, "num_decoder_layers") else {}

    def build(which: str):
        n = 2 if which == "a" else 4
        kw = dict(small, **{depth: n}, **_HF_EXTRA.get(model_type, lambda n: {})(n))
        if extra:
            kw["num_decoder_layers"] = n
        cfg = transformers.AutoConfig.for_model(model_type, **kw)
        return transformers.AutoModel.from_config(cfg)

    return Family(f"hf:{model_type}", model_type, build, f"{depth} 2 -> 4")


# ---------------------------------------------------------------------------- lazily described families


@dataclasses.dataclass
class _Lazy:
    key: str
    make: Callable[[], Family]


def _lazy(key: str, make: Callable[[], Family]) -> _Lazy:
    return _Lazy(key, make)


def all_families() -> list[Family | _Lazy]:
    return [*tv_families(), *hf_families(), *timm_families()]


# ---------------------------------------------------------------------------- the check


_INDEXED = re.compile(r"(.*?)(\d+)")


def _split(comp: str) -> tuple[str, str | None]:
    """A name component as (prefix, index): ``3`` -> ("", "3"), ``block3-2`` ->
    ("block3-", "2"), ``encoder_layer_2`` -> ("encoder_layer_", "2"), ``norm`` -> ("norm", None)."""
    m = _INDEXED.fullmatch(comp)
    return (m.group(1), m.group(2)) if m else (comp, None)


def _skeleton(name: str) -> str:
    return ".".join(p + "#" if i is not None else p for p, i in map(_split, name.split(".")))


def _container_lengths(model) -> dict[tuple[str, str], int]:
    """``{(module path, child prefix): number of children named prefix<int>}``: the
    lengths of the Sequential / ModuleList-like runs of children."""
    out: dict[tuple[str, str], int] = {}
    for name, m in model.named_modules():
        for c, _ in m.named_children():
            prefix, idx = _split(c)
            if idx is not None:
                out[(name, prefix)] = out.get((name, prefix), 0) + 1
    return out


def _groups(model) -> dict[str, tuple] | None:
    """timm's fine-grained parameter groups (one per block), as the raw ordinals its
    ``group_matcher`` gives (``group_parameters`` renumbers them and merges trailing
    layers such as the final norm into the last block's group, which would not compare
    across depths). ``None`` where the model has no matcher."""
    gm = getattr(model, "group_matcher", None)
    if gm is None:
        return None
    try:
        spec = gm(coarse=False)
    except Exception:
        return None
    if callable(spec):
        get = spec
    else:
        compiled = []
        for ordinal, (_, mspec) in enumerate(spec.items()):
            if mspec is None:
                continue
            if isinstance(mspec, (tuple, list)):
                compiled += [(re.compile(m[0]), (ordinal,), m[1]) for m in mspec]
            else:
                compiled.append((re.compile(mspec), (ordinal,), None))

        def get(name: str) -> tuple:
            for rx, prefix, suffix in compiled:
                r = rx.match(name)
                if r:
                    return tuple(float(v) for part in (prefix, r.groups(), suffix) if part for v in part)
            return (float("inf"),)
    out = {}
    for n, _ in model.named_parameters():
        try:
            g = get(n)
        except Exception:
            return None
        out[n] = tuple(g) if isinstance(g, (tuple, list)) else (g,)
    return out


def _pure(groups: dict[str, tuple] | None) -> dict[str, tuple] | None:
    """The groups that are one block: all their tensors under one ``container.<i>`` path
    (CaiT's matcher puts its class-attention blocks into the groups of the last
    self-attention blocks, for layer-wise learning rates: such groups are not blocks)."""
    if not groups:
        return groups
    heads: dict[tuple, set[str]] = {}
    for n, g in groups.items():
        parts = n.split(".")
        first = next((i for i, p in enumerate(parts) if _split(p)[1] is not None), None)
        heads.setdefault(g, set()).add(".".join(parts[:first + 1]) if first is not None else n)
    return {n: g for n, g in groups.items() if len(heads[g]) == 1}


def check_ticket(ticket, src, dst) -> list[str]:
    """Problems with ``ticket`` (empty: every target tensor comes from the right place)."""
    import elastigraph as eg

    by_ptr: dict[tuple, list[str]] = {}
    for name, t in src.state_dict().items():
        by_ptr.setdefault((t.data_ptr(), tuple(t.shape), t.dtype), []).append(name)
    src_alias, dst_alias = eg.masks.canonical_names(src), eg.masks.canonical_names(dst)
    lens_s, lens_d = _container_lengths(src), _container_lengths(dst)
    problems: list[str] = []
    block_src: dict[tuple[str, str], set[str]] = {}
    pairs: dict[str, str] = {}
    for k, v in ticket.weights.items():
        cands = by_ptr.get((v.data_ptr(), tuple(v.shape), v.dtype), [])
        if not cands:
            problems.append(f"{k}: not a source tensor")
            continue
        s = k if k in cands else next((c for c in cands if _skeleton(c) == _skeleton(k)), cands[0])
        pairs[k] = s
        if _skeleton(dst_alias.get(k, k)) != _skeleton(src_alias.get(s, s)):
            problems.append(f"{k} <- {s}: another role")
            continue
        kp, sp = k.split("."), s.split(".")
        diff = [i for i, (a, b) in enumerate(zip(kp, sp)) if a != b]
        if len(diff) > 1:
            problems.append(f"{k} <- {s}: indices differ in {len(diff)} places (another stage)")
            continue
        for i, part in enumerate(kp[:-1]):
            prefix, idx = _split(part)
            if idx is None:
                continue
            container = (".".join(kp[:i]), prefix)
            if lens_s.get(container) == lens_d.get(container):
                if i in diff:
                    problems.append(f"{k} <- {s}: moved among {container[0] or 'the model'}.{prefix}*, which has "
                                    "the same length in both models")
                continue
            block_src.setdefault((".".join(kp[:i + 1]), ""), set()).add(sp[i])
    for (block, _), srcs in sorted(block_src.items()):
        if len(srcs) > 1:
            problems.append(f"target block {block} is assembled from source blocks {sorted(srcs)}")
    gs, gd = _pure(_groups(src)), _pure(_groups(dst))
    if gs and gd:
        per_group: dict[Any, set] = {}
        for k, s in pairs.items():
            if k in gd and s in gs:
                per_group.setdefault(gd[k], set()).add(gs[s])
        for g, srcs in sorted(per_group.items(), key=lambda kv: str(kv[0])):
            if len(srcs) > 1:
                problems.append(f"timm group {g} of the target is assembled from source groups {sorted(srcs)}")
    return problems


# ---------------------------------------------------------------------------- one family


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout


def _first_line(e: BaseException, n: int = 300) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:n] if lines else '(no message)'}"


def _case(src, dst, example) -> dict[str, Any]:
    import torch

    import elastigraph as eg
    from elastigraph.errors import ElastigraphError

    t0 = time.perf_counter()
    try:
        mask = {k: torch.rand(v.shape) > 0.5 for k, v in eg.masks.full_mask(src).items()}
        ticket = eg.transfer(src, mask, dst, example_input=example)
    except _Timeout:
        raise
    except ElastigraphError as e:
        return {"status": "ERROR", "reason": _first_line(e, 400),
                "seconds": round(time.perf_counter() - t0, 2)}
    except Exception as e:
        tb = traceback.extract_tb(e.__traceback__)[-1]
        return {"status": "CRASH", "reason": f"{_first_line(e)} ({Path(tb.filename).name}:{tb.lineno})",
                "seconds": round(time.perf_counter() - t0, 2)}
    secs = round(time.perf_counter() - t0, 2)
    problems = check_ticket(ticket, src, dst)
    plan = {s.label: s.sources for s in ticket.plan.stages}
    if problems:
        return {"status": "WRONG", "reason": f"{len(problems)} problem(s): " + "; ".join(problems[:3]),
                "seconds": secs, "plan": plan}
    changed = [s for s in ticket.plan.stages if len(s.src_blocks) != len(s.dst_blocks)]
    if not changed:
        return {"status": "ERROR", "reason": "transfer found no stage whose depth differs (nothing was stretched)",
                "seconds": secs, "plan": plan}
    return {"status": "OK", "reason": "", "seconds": secs, "plan": plan, "unmapped": ticket.unmapped[:5]}


def _no_forward(model, example) -> str | None:
    """Why ``model`` fails an eager forward on every input elastigraph would try (None if
    one runs): a depth variant its constructor accepts but its own code cannot run
    (SAM2-Hiera's ``global_att_blocks`` are absolute block indices, which the variant's
    other depths leave pointing at other blocks)."""
    import torch

    from elastigraph.graph.shapes import as_meta_args, default_inputs

    cands = [example] if example is not None else default_inputs(model)
    why = None
    for c in cands:
        args = [torch.zeros(t.shape, dtype=t.dtype) for t in as_meta_args(c, type(model).__name__)]
        try:
            with torch.no_grad():
                model(*args)
            return None
        except Exception as e:
            why = f"{[tuple(t.shape) for t in args]}: {_first_line(e, 120)}"
    return why


def run_family(fam: Family | _Lazy, timeout: int) -> dict[str, Any]:
    import torch

    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(timeout)
    t0 = time.perf_counter()
    key = fam.key
    out: dict[str, Any] = {"family": key, "name": "", "knob": ""}
    try:
        if isinstance(fam, _Lazy):
            fam = fam.make()
        out.update(name=fam.name, knob=fam.knob)
        try:
            a, b = fam.build("a"), fam.build("b")
            out.update(name=fam.name, knob=fam.knob)
        except _Timeout:
            raise
        except NoKnob as e:
            out.update(status="NO-KNOB", reason=str(e))
            return out
        except Exception as e:
            out.update(status="BUILD-FAIL", reason=_first_line(e))
            return out
        a.eval()
        b.eval()
        try:
            import elastigraph as eg

            out["capture"] = eg.analyze(a, fam.example_input).traced.capture
        except _Timeout:
            raise
        except Exception:
            out["capture"] = "-"
        out["stretch"] = _case(a, b, fam.example_input)
        out["squeeze"] = _case(b, a, fam.example_input)
        out["status"] = "DONE"
        if all(out[d]["reason"].startswith("TraceError: shape propagation") for d in ("stretch", "squeeze")):
            broken = _no_forward(a, fam.example_input)
            if broken:  # the benchmark's own variant is broken, not the library's analysis
                out["cases"] = {d: out.pop(d) for d in ("stretch", "squeeze")}  # kept in the JSON
                out.update(status="BUILD-FAIL", reason=f"the shallow variant does not run its own forward: {broken}")
                return out
        reasons = " ".join(out[d].get("reason", "") for d in ("stretch", "squeeze"))
        period = next((int(m.group(1)) for m in [re.search(r"come in (\d+) kinds that alternate", reasons)] if m), None)
        single = "the source stage has a single block" in reasons
        if ((period and period > 1) or single) and fam.restep is not None:
            # the first ask was impossible, as the refusal says: blocks of alternating kinds
            # change only by whole periods (asked by +p blocks, then from 2p blocks a stage:
            # Twins fixes block 0 and a position conv before its local/global pairs); a stage
            # whose source holds only its block 0 has nothing to copy (asked from 2 blocks).
            out["impossible_ask"] = {"knob": fam.knob, "stretch": out["stretch"], "squeeze": out["squeeze"]}
            asks = [(period or 1, 0 if period else 2)]
            if period:  # a stage whose first blocks are fixed may need a source holding a whole period after them
                asks.append((period, 2 * period))
            for step, lo in asks:
                fam2 = fam.restep(step, lo)
                a, b = fam2.build("a"), fam2.build("b")
                a.eval()
                b.eval()
                out["knob"], out["name"] = fam2.knob, fam2.name
                out["stretch"] = _case(a, b, fam2.example_input)
                out["squeeze"] = _case(b, a, fam2.example_input)
                if outcomes(out) == ["OK", "OK"]:
                    break
    except _Timeout:
        out.update(status="TIMEOUT", reason=f"over {timeout} s")
    except Exception as e:  # the benchmark's own machinery (describing the family) failed
        out.update(status="BUILD-FAIL", reason=f"describing the family: {_first_line(e)}")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def _worker(args: tuple) -> dict[str, Any]:
    key, timeout = args
    torch_threads = int(os.environ.get("COVERAGE_THREADS", "1"))
    import torch

    torch.set_num_threads(torch_threads)
    fam = next(f for f in all_families() if f.key == key)
    return run_family(fam, timeout)


# ---------------------------------------------------------------------------- report


def outcomes(r: dict[str, Any]) -> list[str]:
    if r.get("status") != "DONE":
        return [r.get("status", "?")] * 2
    return [r["stretch"]["status"], r["squeeze"]["status"]]


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    with_knob = [r for r in results if r.get("status") in ("DONE", "TIMEOUT")]
    cases = [o for r in with_knob for o in outcomes(r)]
    fam_ok = [r for r in with_knob if outcomes(r) == ["OK", "OK"]]
    count = {s: cases.count(s) for s in ("OK", "ERROR", "CRASH", "WRONG", "TIMEOUT")}
    return {
        "families": len(results),
        "families_with_depth_knob": len(with_knob),
        "families_ok_both_ways": len(fam_ok),
        "impossible_first_asks": sum(1 for r in with_knob if r.get("impossible_ask")),
        "cases": len(cases),
        **{f"cases_{k.lower()}": v for k, v in count.items()},
        "no_knob_or_build_fail": len(results) - len(with_knob),
    }


def _short(r: dict[str, Any], d: str) -> str:
    if r.get("status") != "DONE":  # NO-KNOB, BUILD-FAIL (also after both cases ran), TIMEOUT
        return r.get("status", "?")
    return (r.get(d) or {}).get("status", "?")


def markdown(results: list[dict[str, Any]], command: str) -> str:
    s = summary(results)
    lines = [
        f"Command: `{command}`", "",
        f"{s['families']} families; {s['families_with_depth_knob']} with a depth knob that builds; "
        f"{s['families_ok_both_ways']} of those OK both ways ({s['families_ok_both_ways'] / max(1, s['families_with_depth_knob']):.0%}); "
        f"{s['impossible_first_asks']} first asked for a depth change their stages cannot have (alternating kinds, "
        "or a source stage holding only its block 0: asked again, marked `(re-asked)`; the first ask is in the "
        "JSON). Cases (family x direction): "
        f"{s['cases_ok']} OK, {s['cases_error']} ERROR, {s['cases_crash']} CRASH, {s['cases_wrong']} WRONG, "
        f"{s['cases_timeout']} TIMEOUT.", "",
        "| family | model | depths | capture | stretch | squeeze | reason (first non-OK) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        reason = r.get("reason", "")
        if r.get("status") == "DONE":
            reason = next((r[d]["reason"] for d in ("stretch", "squeeze") if r[d]["status"] != "OK"), "")
        reason = reason.replace("|", "/").replace("\n", " ")[:220]
        knob = r.get("knob", "") + (" (re-asked)" if r.get("impossible_ask") else "")
        lines.append(f"| {r['family']} | {r.get('name', '')} | {knob} | {r.get('capture', '-')} | "
                     f"{_short(r, 'stretch')} | {_short(r, 'squeeze')} | {reason} |")
    return "\n".join(lines) + "\n"


BEGIN, END = "<!-- coverage-table: written by benchmarks/coverage.py --md -->", "<!-- /coverage-table -->"


def write_markdown(path: Path, table: str) -> None:
    """Write ``table`` to ``path``; in a file that has the markers (docs/coverage.md), only
    the part between them is replaced."""
    text = path.read_text() if path.exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + BEGIN + "\n" + table + rest[rest.index(END):]
    else:
        text = table
    path.write_text(text)


def print_table(results: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="elastigraph coverage")
    for c in ("family", "model", "depths", "capture", "stretch", "squeeze", "reason"):
        t.add_column(c, overflow="fold")
    colors = {"OK": "green", "ERROR": "yellow", "WRONG": "bold red", "CRASH": "red", "TIMEOUT": "magenta"}
    for r in results:
        reason = r.get("reason", "")
        if r.get("status") == "DONE":
            reason = next((r[d]["reason"] for d in ("stretch", "squeeze") if r[d]["status"] != "OK"), "")
        cells = [_short(r, "stretch"), _short(r, "squeeze")]
        cells = [f"[{colors.get(c, 'dim')}]{c}[/]" for c in cells]
        t.add_row(r["family"], r.get("name", ""), r.get("knob", ""), r.get("capture", "-"), *cells, reason[:160])
    Console(width=200).print(t)
    print(json.dumps(summary(results), indent=2))


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", default="*", help="comma-separated glob(s) over family keys (tv:*, hf:gpt2, timm:vit*)")
    ap.add_argument("--jobs", type=int, default=1, help="families run in parallel (one process each)")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per family (both directions)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/coverage.json"))
    ap.add_argument("--md", default=None, help="also write the markdown table here (docs/coverage.md: between its markers)")
    ap.add_argument("--force", action="store_true", help="redo families already in OUT.jsonl")
    ap.add_argument("--list", action="store_true", help="list the family keys and exit")
    args = ap.parse_args(argv)

    fams = all_families()
    pats = [p.strip() for p in args.families.split(",") if p.strip()]
    fams = [f for f in fams if any(fnmatch.fnmatch(f.key, p) for p in pats)]
    if args.list:
        for f in fams:
            print(f.key)
        return 0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".jsonl")
    done: dict[str, dict[str, Any]] = {}
    if partial.exists() and not args.force:
        for line in partial.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                done[r["family"]] = r
    todo = [f for f in fams if f.key not in done]
    print(f"{len(fams)} families selected, {len(fams) - len(todo)} already in {partial}, running {len(todo)} "
          f"with {args.jobs} job(s), {args.timeout} s each", flush=True)
    if args.force and partial.exists():
        keep = [json.loads(x) for x in partial.read_text().splitlines() if x.strip()]
        keys = {f.key for f in fams}
        partial.write_text("".join(json.dumps(r) + "\n" for r in keep if r["family"] not in keys))

    def record(r: dict[str, Any]) -> None:
        done[r["family"]] = r
        with partial.open("a") as fh:
            fh.write(json.dumps(r) + "\n")
        o = outcomes(r)
        print(f"{r['family']:<40} {o[0]:<8} {o[1]:<8} {r.get('seconds', 0):>6.1f}s  {r.get('knob', '')}", flush=True)

    if args.jobs <= 1:
        for f in todo:
            record(run_family(f, args.timeout))
    else:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        with ctx.Pool(args.jobs, maxtasksperchild=8) as pool:
            for r in pool.imap_unordered(_worker, [(f.key, args.timeout) for f in todo]):
                record(r)
    results = [done[f.key] for f in fams if f.key in done]
    command = "python benchmarks/coverage.py " + " ".join(argv if argv is not None else sys.argv[1:])
    import torch

    payload = {
        "command": command.strip(),
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count()},
        "versions": _versions(),
        "summary": summary(results),
        "results": results,
    }
    out.write_text(json.dumps(payload, indent=2) + "\n")
    if args.md:
        write_markdown(Path(args.md), markdown(results, command.strip()))
    print_table(results)
    print(f"wrote {out}" + (f" and {args.md}" if args.md else ""))
    return 0


def _versions() -> dict[str, str]:
    out = {}
    for m in ("timm", "torchvision", "transformers"):
        try:
            out[m] = __import__(m).__version__
        except ImportError:
            out[m] = "not installed"
    return out


if __name__ == "__main__":
    sys.exit(main())
