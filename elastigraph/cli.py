"""The ``elastigraph`` command line: a thin typer + rich layer over the library.

``inspect`` (a model's stages and segments), ``transfer`` (move a ticket),
``transfer-folder`` (a Hugging Face checkpoint folder to a deeper/shallower one, streamed),
``prune`` (a mask by a named method), ``train`` (masked training -> results JSON), ``run`` (a recipe,
resumable) and ``report`` (tables and plots of a run). MODEL is a zoo name with optional
constructor overrides: ``timm:vit_tiny_patch16_224?depth=6&img_size=32``. User errors
print one message and exit with status 2, without a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import ElastigraphError, OutputPathError

app = typer.Typer(
    name="elastigraph",
    help="Move lottery tickets (masks + rewound weights) between networks of one family but different depth.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
console = Console()
err_console = Console(stderr=True)

MODEL_HELP = (
    "Zoo name with optional overrides: cifar_resnet_56, tv:resnet34, "
    "'timm:vit_tiny_patch16_224?depth=6&img_size=32', 'timm:convnext_atto?depths=[2,2,4,2]'."
)


# --------------------------------------------------------------------------- helpers


def _shape(dataset: Optional[str], data_root: Optional[str], in_chans: Optional[int], num_classes: Optional[int]) -> tuple[int, int]:
    """Input channels and classes: from ``--dataset`` when given, else the options (3/10)."""
    if dataset is not None:
        from .recipes.schema import dataset_shape

        c, k = dataset_shape(dataset, data_root)
        return (in_chans or c), (num_classes or k)
    return in_chans or 3, num_classes or 10


def _example_input(dataset: Optional[str], data_root: Optional[str], image_size: Optional[int], in_chans: int) -> Optional[tuple[int, ...]]:
    """Example input shape for tracing: ``--image-size``, else the dataset's images, else
    None (the graph module guesses)."""
    if image_size is not None:
        return (2, in_chans, image_size, image_size)
    if dataset is not None:
        from .recipes.schema import dataset_input

        return (2, *dataset_input(dataset, data_root)[2])
    return None


def _out_path(path: Path, option: str = "--out", *, folder: bool = False) -> Path:
    """Check an output path before any work: no part of it above may be an existing file,
    and it must not be a folder (a file expected) or a file (a folder expected)."""
    p = Path(path)
    for parent in list(reversed(p.parents)):
        if parent.exists() and not parent.is_dir():
            raise OutputPathError(f"{option} {str(p)!r}: {str(parent)!r} is a file, not a folder; choose another path")
    if folder and p.exists() and not p.is_dir():
        raise OutputPathError(f"{option} {str(p)!r} is an existing file; give a folder (new or an earlier run's)")
    if not folder and p.is_dir():
        raise OutputPathError(f"{option} {str(p)!r} is a folder; give a file name inside it, e.g. {str(p / 'out')!r}")
    return p


def _seed(value: int) -> int:
    """typer callback: a seed in [0, MAX_SEED] (usage error otherwise)."""
    from .seeds import MAX_SEED

    if not 0 <= value <= MAX_SEED:
        raise typer.BadParameter(f"{value} is outside [0, {MAX_SEED}]")
    return value


def _sparsity(value: float) -> float:
    """typer callback: a pruning fraction in [0, 1) (1.0 would remove every weight)."""
    if not 0.0 <= value < 1.0:  # also NaN
        raise typer.BadParameter(f"{value} is outside [0, 1); 1.0 would remove every weight")
    return value


def _model(spec: str, in_chans: int, num_classes: int, seed: int = 0, example: Optional[tuple[int, ...]] = None):
    """Build MODEL (zoo name + overrides) with a seeded random init; ``example`` (the input
    shape, when known) sets ``img_size`` for models that take one, unless MODEL sets it."""
    import torch

    from .recipes.schema import ModelSpec, parse_model_spec

    name, overrides = parse_model_spec(spec)
    torch.manual_seed(seed)
    from .recipes.schema import image_size

    size = image_size(example) if example is not None else None
    return ModelSpec(name=name, overrides=overrides).build(in_chans=in_chans, num_classes=num_classes, img_size=size)


def _load_weights(model, path: Path, what: str) -> None:
    """Load a safetensors state dict into ``model`` (strict), with a readable error."""
    from .errors import MaskError
    from .recipes.cache import load_tensors

    if not path.is_file():
        raise FileNotFoundError(f"{what} file {str(path)!r} does not exist")
    try:
        state = load_tensors(path)
    except Exception as e:  # safetensors raises its own error types for a bad header
        raise MaskError(f"{what} file {path} is not a safetensors state dict: {e}") from None
    missing, unexpected = [], []
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    bad_shape = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or bad_shape:
        raise MaskError(
            f"{what} file {path} does not fit {type(model).__name__}: "
            f"missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shape {bad_shape[:3]} "
            "(is it the state dict of the same model spec?)"
        )
    model.load_state_dict(state)


def _read_plan(path: Path):
    """A plan JSON file (as written next to a transferred mask), read with the bounded
    JSON reader (size, nesting) and a named error for anything that is not one."""
    from .errors import MappingError
    from .io import read_json
    from .transfer import MAX_PLAN_BYTES, Plan

    return Plan.from_dict(read_json(path, f"plan file {path}", max_bytes=MAX_PLAN_BYTES, error=MappingError))


def _param_table(model) -> Table:
    from . import masks

    prunable = set(masks.prunable_parameters(model))
    total = sum(p.numel() for p in model.parameters())
    pr = sum(p.numel() for n, p in model.named_parameters() if n in prunable)
    t = Table(title="parameters", show_header=False)
    t.add_row("total", f"{total:,}")
    t.add_row("prunable (conv/linear weights)", f"{pr:,} in {len(prunable)} tensors")
    return t


def _emit_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


# --------------------------------------------------------------------------- commands


@app.command()
def inspect(
    model: str = typer.Argument(..., help=MODEL_HELP),
    dataset: Optional[str] = typer.Option(None, help="Take input channels/classes from this dataset."),
    data_root: Optional[str] = typer.Option(None, help="Folder of the dataset files."),
    in_chans: Optional[int] = typer.Option(None, min=1, max=65536, help="Input channels (default 3, or the dataset's)."),
    num_classes: Optional[int] = typer.Option(None, min=1, max=10**7, help="Classes (default 10, or the dataset's)."),
    image_size: Optional[int] = typer.Option(None, min=1, max=65536, help="Trace with square inputs of this size (default: the dataset's, else guessed)."),
    as_json: bool = typer.Option(False, "--json", help="Print the analysis as JSON."),
) -> None:
    """Show MODEL's stages and segments (the units a ticket transfer replicates or drops)."""
    from . import graph

    c, k = _shape(dataset, data_root, in_chans, num_classes)
    example = _example_input(dataset, data_root, image_size, c)
    net = _model(model, c, k, example=example)
    analysis = graph.analyze(net, example, name=model)
    if as_json:
        from . import masks

        prunable = set(masks.prunable_parameters(net))
        _emit_json({
            "model": model,
            "parameters": sum(p.numel() for p in net.parameters()),
            "prunable_parameters": sum(p.numel() for n, p in net.named_parameters() if n in prunable),
            "analysis": analysis.to_dict(),
        })
        return
    console.print(analysis)
    console.print(_param_table(net))


@app.command()
def transfer(
    src: str = typer.Option(..., "--src", help="Source model. " + MODEL_HELP),
    mask: Path = typer.Option(..., "--mask", help="Source mask file (safetensors, or the paper's mask.pth)."),
    dst: str = typer.Option(..., "--dst", help="Target model (same family, other depth)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Target mask file to write (.safetensors); the plan goes to OUT.plan.json."),
    out_hf: Optional[Path] = typer.Option(None, "--out-hf", help="Hugging Face folder to write (hf: targets): config, weights zero where pruned, mask.safetensors, elastigraph.json; loads with from_pretrained."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier --out-hf folder."),
    strategy: Optional[str] = typer.Option(None, help="Named transfer strategy (default: the library's)."),
    mapping: Optional[str] = typer.Option(None, help="Explicit block mapping, e.g. '0:0;1:1,2;2:3,4' (per stage, '|' between stages), or a plan JSON file."),
    src_weights: Optional[Path] = typer.Option(None, help="Source state dict (safetensors) to carry, e.g. its rewind weights; writes OUT.weights.safetensors."),
    dataset: Optional[str] = typer.Option(None, help="Take input channels/classes from this dataset."),
    data_root: Optional[str] = typer.Option(None),
    in_chans: Optional[int] = typer.Option(None, min=1, max=65536),
    num_classes: Optional[int] = typer.Option(None, min=1, max=10**7),
    image_size: Optional[int] = typer.Option(None, min=1, max=65536, help="Trace with square inputs of this size (default: the dataset's, else guessed)."),
    seed: int = typer.Option(0, callback=_seed, help="Seed of the target's initialisation (for parameters the plan does not carry)."),
    as_json: bool = typer.Option(False, "--json", help="Print file paths and sparsities as JSON."),
) -> None:
    """Move a ticket from SRC to DST: print the plan and sparsities, write mask (+ weights) and plan
    (--out) and/or a Hugging Face folder of the target with the ticket applied (--out-hf)."""
    from . import masks
    from .recipes.cache import save_tensors, write_json
    from .transfer import transfer as _transfer

    if strategy is not None and mapping is not None:
        raise typer.BadParameter("give --strategy or --mapping, not both", param_hint="--mapping")
    if out is None and out_hf is None:
        raise typer.BadParameter("give --out (mask file) and/or --out-hf (Hugging Face folder)", param_hint="--out")
    if not mask.is_file():
        raise FileNotFoundError(f"mask file {str(mask)!r} does not exist")
    if out is not None:
        _out_path(out)
    if out_hf is not None:
        _out_path(out_hf, "--out-hf", folder=True)
    if strategy is not None:
        from .transfer import parse_strategy

        parse_strategy(strategy)
    c, k = _shape(dataset, data_root, in_chans, num_classes)
    example = _example_input(dataset, data_root, image_size, c)
    plan_or_mapping: Any = mapping
    if mapping is not None and mapping.endswith(".json"):
        if not Path(mapping).is_file():
            raise FileNotFoundError(f"plan file {mapping!r} does not exist")
        plan_or_mapping = _read_plan(Path(mapping))
    src_model = _model(src, c, k, seed, example)
    if src_weights is not None:
        _load_weights(src_model, src_weights, "--src-weights")
    src_mask = masks.read_mask(mask, model=src_model, model_name=src)
    dst_model = _model(dst, c, k, seed, example)
    if out_hf is not None:
        from .models.hf_folder import check_output

        check_output(dst_model, out_hf, overwrite=overwrite)  # before the transfer's work
    ticket = _transfer(src_model, src_mask, dst_model, strategy=strategy, mapping=plan_or_mapping, example_input=example)
    files: dict[str, str] = {}
    info = {"source": src, "target": dst, "strategy": strategy, "mapping": mapping}
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        stem = out.with_suffix("") if out.suffix == ".safetensors" else out
        plan_path = Path(f"{stem}.plan.json")
        masks.save_mask(ticket.mask, out, metadata=info)
        files.update(mask=str(out), plan=str(plan_path))
        if src_weights is not None:
            w = Path(f"{stem}.weights.safetensors")
            save_tensors(w, ticket.weights)
            files["weights"] = str(w)
        write_json(plan_path, ticket.plan.to_dict())
    if out_hf is not None:
        from .models.hf_folder import save_pretrained

        # weights: --src-weights when given, else the source model as built (seeded init)
        meta = {**info, "source_mask": str(mask), "source_weights": str(src_weights) if src_weights else None,
                "seed": seed}
        files["hf_folder"] = str(save_pretrained(ticket, dst_model, out_hf, metadata=meta, overwrite=overwrite))
    report = masks.sparsity_report(ticket.mask, dst_model, model_name=dst)
    if as_json:
        _emit_json({"files": files, "source_sparsity": masks.sparsity(src_mask), "sparsity": masks.sparsity(ticket.mask),
                    "report": report.to_dict()})
        return
    console.print(ticket.plan)
    console.print(f"mapping: {ticket.plan.mapping_string()}", markup=False)
    console.print(report)
    console.print(
        f"source sparsity {masks.sparsity(src_mask):.2%} -> target sparsity {masks.sparsity(ticket.mask):.2%}; "
        f"wrote {', '.join(files.values())}",
        markup=False,
    )


def _hf_folder(spec: str) -> Optional[Path]:
    """MODEL as a Hugging Face checkpoint folder (a folder holding config.json), else None."""
    p = Path(spec)
    return p if ":" not in spec.split("/")[0] and (p / "config.json").is_file() else None


@app.command()
def prune(
    model: str = typer.Argument(..., help=MODEL_HELP + " Or a Hugging Face checkpoint folder (config.json + safetensors): global magnitude and N:M are streamed from its shards, other methods load it in fp32."),
    method: str = typer.Option(..., "--method", "-m", help="magnitude, random, snip, grasp, synflow or wanda."),
    sparsity: Optional[float] = typer.Option(None, "--sparsity", "-s", callback=lambda v: None if v is None else _sparsity(v), help="Fraction of prunable weights to remove, in [0, 1)."),
    n_m: Optional[str] = typer.Option(None, "--n-m", help="N:M semi-structured instead of --sparsity (magnitude, wanda): keep N of every M consecutive inputs, e.g. 2:4."),
    out: Path = typer.Option(..., "--out", help="Mask file to write (.safetensors)."),
    weights: Optional[Path] = typer.Option(None, help="State dict (safetensors) to score instead of a random init."),
    dataset: Optional[str] = typer.Option(None, help="Data for SNIP/GraSP/Wanda (and channels/classes), e.g. fashion_mnist or pystdlib?seq_len=128."),
    data_root: Optional[str] = typer.Option(None),
    batches: int = typer.Option(1, min=1, help="SNIP/GraSP/Wanda: batches to score on."),
    batch_size: int = typer.Option(128, min=1, help="SNIP/GraSP/Wanda: examples per batch."),
    iterations: int = typer.Option(100, min=1, help="SynFlow: pruning rounds."),
    scope: str = typer.Option("global", help="global or layerwise (Wanda: always per output row)."),
    in_chans: Optional[int] = typer.Option(None, min=1, max=65536),
    num_classes: Optional[int] = typer.Option(None, min=1, max=10**7),
    seed: int = typer.Option(0, callback=_seed, help="Seed of the init and of random pruning."),
    as_json: bool = typer.Option(False, "--json", help="Print the sparsity report as JSON."),
) -> None:
    """Prune MODEL to SPARSITY (or an N:M pattern) with METHOD and write the mask."""
    from . import masks
    from . import prune as _prune
    from .errors import StrategyError

    fn = _prune.by_name(method)
    _out_path(out)
    if method == "imp":
        raise StrategyError("'imp' needs training between rounds: use `elastigraph run RECIPE` (or prune.imp in Python)")
    if (sparsity is None) == (n_m is None):
        raise typer.BadParameter("give --sparsity or --n-m (N:M, e.g. 2:4), exactly one", param_hint="--sparsity")
    if n_m is not None:
        if method not in ("magnitude", "wanda"):
            raise StrategyError(f"--n-m is for magnitude and wanda, not {method}")
        from .prune._core import parse_n_m

        parse_n_m(n_m, method)
    folder = _hf_folder(model)
    if folder is not None:
        if weights is not None:
            raise typer.BadParameter("MODEL is a checkpoint folder: its weights are loaded from it", param_hint="--weights")
        if method == "magnitude" and scope == "global":  # streamed: no model in memory
            from .transfer_folder import prune_folder

            out.parent.mkdir(parents=True, exist_ok=True)
            sp = prune_folder(folder, out, sparsity=sparsity, n_m=n_m, metadata={
                "model": model, "method": method, "sparsity": sparsity, "n_m": n_m, "seed": seed})
            if as_json:
                _emit_json({"file": str(out), "sparsity": sp})
            else:
                console.print(f"wrote {out} ({method}{' ' + n_m if n_m else ''}, sparsity {sp:.2%}; streamed from "
                              f"{folder})", markup=False)
            return
        import torch

        from .models.hf_folder import _transformers

        net = _transformers().AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    else:
        c, k = _shape(dataset, data_root, in_chans, num_classes)
        net = _model(model, c, k, seed, _example_input(dataset, data_root, None, c))
    if weights is not None:
        _load_weights(net, weights, "--weights")
    ds = None
    if dataset is not None:  # the model must fit the data it is pruned for, whatever the method
        from .train.data import load_dataset
        from .train.loop import check_data_fits

        ds = load_dataset(dataset, root=data_root, split="train", limit=batches * batch_size, seed=seed)
        check_data_fits(net, ds, model_name=model)
    if method == "magnitude":
        m = fn(net, n_m=n_m) if n_m is not None else fn(net, sparsity=sparsity, scope=scope)
    elif method == "random":
        m = fn(net, sparsity, scope=scope, seed=seed)
    elif method == "synflow":
        m = fn(net, sparsity, iterations=iterations, scope=scope)
    else:
        if dataset is None:
            raise StrategyError(f"{method} scores weights on data: add --dataset (e.g. --dataset fashion_mnist)")
        from .recipes.runner import normalized_batches

        data = normalized_batches(ds, batches, batch_size, seed)
        if method == "wanda":
            m = fn(net, data, n_m=n_m) if n_m is not None else fn(net, data, sparsity)
        else:
            m = fn(net, data, sparsity, scope=scope)
    out.parent.mkdir(parents=True, exist_ok=True)
    masks.save_mask(m, out, metadata={"model": model, "method": method, "sparsity": sparsity, "n_m": n_m, "seed": seed})
    report = masks.sparsity_report(m, net, model_name=model)
    if as_json:
        _emit_json({"file": str(out), "report": report.to_dict()})
        return
    console.print(report)
    console.print(f"wrote {out} ({method}{' ' + n_m if n_m else ''}, sparsity {masks.sparsity(m):.2%})", markup=False)


@app.command("transfer-folder")
def transfer_folder_cmd(
    src: Path = typer.Argument(..., help="Hugging Face checkpoint folder (config.json + safetensors shards)."),
    dst: Path = typer.Argument(..., help="Folder to write (new or empty; --overwrite replaces an earlier output)."),
    layers: int = typer.Option(..., "--layers", min=1, max=100_000, help="num_hidden_layers of the target."),
    sparsity: Optional[float] = typer.Option(None, "--sparsity", "-s", callback=lambda v: None if v is None else _sparsity(v), help="Global magnitude mask of SRC at this sparsity (found in bounded memory)."),
    n_m: Optional[str] = typer.Option(None, "--n-m", help="N:M magnitude mask of SRC instead, e.g. 2:4."),
    mask: Optional[Path] = typer.Option(None, "--mask", help="A mask file for SRC instead (any method's: elastigraph prune SRC --method wanda --n-m 2:4 ...)."),
    strategy: Optional[str] = typer.Option(None, help="Named transfer strategy (default: the library's)."),
    shard_bytes: int = typer.Option(1 << 30, "--shard-bytes", min=1, help="Largest output shard, bytes (memory does not grow with it)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier output folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the folder's elastigraph.json as JSON."),
) -> None:
    """Stretch or squeeze the checkpoint folder SRC to --layers layers into DST, streamed tensor
    by tensor (memory about a few copies of the largest tensor, not the model); the mask is
    --sparsity, --n-m, --mask or none (dense). DST loads with from_pretrained."""
    from .models.hf_folder import INFO_FILE
    from .transfer_folder import transfer_folder

    if mask is not None and not mask.is_file():
        raise FileNotFoundError(f"mask file {str(mask)!r} does not exist")
    _out_path(dst, "DST", folder=True)
    path = transfer_folder(src, dst, num_hidden_layers=layers, mask=mask, sparsity=sparsity, n_m=n_m,
                           strategy=strategy, shard_bytes=shard_bytes, overwrite=overwrite,
                           metadata={"source": str(src), "mask": str(mask) if mask else None, "sparsity": sparsity,
                                     "n_m": n_m})
    info = json.loads((path / INFO_FILE).read_text())
    if as_json:
        _emit_json({"folder": str(path), **info})
        return
    sp = info["sparsity"]
    console.print(f"mapping: {info['mapping']}", markup=False)
    console.print(f"source sparsity {sp['source']:.2%} -> target sparsity {sp['target']:.2%}; wrote {path} "
                  f"({info['num_hidden_layers']} layers)", markup=False)


@app.command()
def train(
    model: str = typer.Argument(..., help=MODEL_HELP),
    dataset: str = typer.Option("fashion_mnist", help="fashion_mnist, cifar10, cifar100, synthetic, imagefolder:PATH."),
    data_root: Optional[str] = typer.Option(None),
    mask: Optional[Path] = typer.Option(None, help="Train under this mask (safetensors or mask.pth)."),
    weights: Optional[Path] = typer.Option(None, help="Start from this state dict (safetensors), e.g. a ticket's weights."),
    steps: Optional[int] = typer.Option(None, min=1, help="Optimizer steps (overrides --epochs)."),
    epochs: float = typer.Option(1.0),
    start_step: int = typer.Option(0, min=0, help="Resume the LR schedule at this step (a rewound ticket: its rewind step)."),
    batch_size: int = typer.Option(128, min=1),
    lr: float = typer.Option(0.1),
    train_limit: Optional[int] = typer.Option(None, min=1, help="Use a class-balanced subset of this many training images."),
    test_limit: Optional[int] = typer.Option(None, min=1),
    seed: int = typer.Option(0, callback=_seed),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1 ..."),
    out: Path = typer.Option(Path("train_results.json"), help="Results JSON to write."),
    save_weights: Optional[Path] = typer.Option(None, help="Also write the trained state dict (safetensors)."),
    as_json: bool = typer.Option(False, "--json", help="Print the results JSON."),
) -> None:
    """Train MODEL (optionally under a mask) on DATASET and write the results JSON."""
    from . import masks
    from .recipes.cache import save_tensors, write_json
    from .train import TrainConfig, rich_progress
    from .train import train as _train
    from .train.data import load_dataset

    _out_path(out)
    if save_weights is not None:
        _out_path(save_weights, "--save-weights")
    cfg = TrainConfig(epochs=epochs, steps=steps, batch_size=batch_size, lr=lr, seed=seed, device=device)
    tr = load_dataset(dataset, root=data_root, split="train", limit=train_limit, seed=seed)
    te = load_dataset(dataset, root=data_root, split="test", limit=test_limit, seed=seed)
    net = _model(model, tr.spec.in_chans, tr.spec.num_classes, seed, tuple(tr.x.shape[1:]) if hasattr(tr, "x") else None)
    if weights is not None:
        _load_weights(net, weights, "--weights")
    m = masks.read_mask(mask, model=net, model_name=model) if mask is not None else None
    import warnings

    from .train.loop import DivergenceWarning

    with rich_progress(f"train {model}", console=err_console) as cb, warnings.catch_warnings():
        warnings.simplefilter("ignore", DivergenceWarning)  # said once below, as the error
        res = _train(net, tr, te, cfg, mask=m, start_step=start_step, progress=None if as_json else cb)
    result = {
        "model": model, "dataset": dataset, "mask": str(mask) if mask else None,
        "sparsity": masks.sparsity(m) if m is not None else 0.0,
        "test_acc": res.test_acc, "test_loss": res.test_loss, "steps": res.steps, "wall_s": res.wall_s,
        "images_per_s": res.images_per_s, "device": res.device, "config": res.config, "history": res.history,
        **({"diverged": True, "diverged_at": res.diverged_at, "test_acc": None, "test_loss": None} if res.diverged else {}),
    }
    write_json(out, result)
    if save_weights is not None:
        save_tensors(save_weights, res.final_state)
    if res.diverged:
        from .errors import DivergedError

        raise DivergedError(f"training {model} diverged: the loss is NaN/inf at step {res.diverged_at + 1} of "
                            f"{res.steps + start_step} (lr {lr}); {out} records it as diverged. Lower --lr")
    if as_json:
        _emit_json(result)
        return
    console.print(
        f"{model} on {dataset}: test accuracy {res.test_acc:.2%} (loss {res.test_loss:.3f}) after {res.steps} steps "
        f"in {res.wall_s:.1f}s on {res.device}; wrote {out}",
        markup=False,
    )


@app.command()
def run(
    recipe: Path = typer.Argument(..., help="Recipe YAML file (see recipes/)."),
    smoke: bool = typer.Option(False, "--smoke", help="Seconds-long version: tiny subset, few steps, one seed, one level."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run directory (default runs/<recipe name>[-smoke])."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe field: --set dataset.name=cifar10 --set train.steps=500."),
    check: bool = typer.Option(False, "--check", help="Only validate the recipe."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No per-step log or progress bars."),
    as_json: bool = typer.Option(False, "--json", help="Print the results JSON at the end."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Step cache folder to use (and share with other runs; safe "
                                         "for concurrent runs) instead of OUT/steps."),
    wait: bool = typer.Option(False, "--wait", help="If another run holds OUT, wait for it instead of exiting."),
    fleet: str = typer.Option("auto", "--fleet", help="Train a level's retrains together as one fleet: auto (on CUDA), on, off."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Worker processes for independent steps (default: one per GPU or core when trainings are long enough; 1 = none)."),
    executor: str = typer.Option("local", "--executor", help="Where steps run: local (this machine: this process and --workers) or ray (every step a task on a Ray cluster; the driver writes the cache; needs pip install 'elastigraph\\[ray]')."),
    address: Optional[str] = typer.Option(None, "--address", help="With --executor ray: the cluster to join, e.g. auto (the one `ray start` made on this machine) or HEAD_IP:6379 (default: RAY_ADDRESS or a `ray start` cluster here, else a new local Ray)."),
    max_retries: Optional[int] = typer.Option(None, "--max-retries", min=0, help="With --executor ray: how often a failed step's task is run again before the run stops naming it (default 2)."),
) -> None:
    """Run RECIPE (resumable: finished steps are skipped); writes OUT/results.json, CSV and plots.
    One run per OUT at a time (a second one exits naming the first one's PID, or waits with --wait)."""
    from .recipes.runner import run_recipe
    from .recipes.schema import load_recipe
    from .report import load_results, summary_table
    from .train import rich_progress

    from .recipes.executors import make_executor

    if out is not None:
        _out_path(out, folder=True)
    if cache is not None:
        _out_path(cache, "--cache", folder=True)
    ex = make_executor(executor, workers=workers, address=address, max_retries=max_retries)  # bad options: one line
    r = load_recipe(recipe, smoke=smoke, overrides=set_)
    if check:
        console.print(f"{recipe}: valid recipe {r.name!r} ({len(r.targets)} target(s), {len(r.seeds)} seed(s))", markup=False)
        return
    out_dir = _out_path(out or Path("runs") / (r.name + ("-smoke" if smoke else "")), folder=True)
    log_console = err_console if as_json else console
    log = None if quiet else (lambda s: log_console.print(s, markup=False, highlight=False, soft_wrap=True))
    progress = None if (quiet or as_json) else (lambda label: rich_progress(label, console=log_console))
    summary = run_recipe(r, out_dir, log=log, progress=progress, cache=cache, wait=wait, fleet=fleet, executor=ex)
    if summary.results_path is None:  # not rank 0 under torchrun
        return
    results = load_results(out_dir)
    if as_json:
        _emit_json(results)
        return
    console.print(summary_table(results))
    console.print(
        f"{summary.executed} step(s) run, {summary.skipped} from the cache; wrote {out_dir}/results.json, "
        "results.csv, summary.csv, comparisons.csv, accuracy.png, layer_density.png",
        markup=False,
    )


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="A run directory (holds results.json)."),
    as_json: bool = typer.Option(False, "--json", help="Print the per-method summary as JSON."),
) -> None:
    """Rewrite RUN_DIR's CSV files and plots from its results.json and print the summary."""
    from .report import compare, load_results, metric_of, summarize, summary_table, write_report

    paths = write_report(run_dir)
    results = load_results(run_dir)
    if as_json:
        _emit_json({"files": {k: str(v) for k, v in paths.items()}, "summary": summarize(results["records"], metric_of(results)),
                    "comparisons": compare(results["records"], metric_of(results))})
        return
    console.print(summary_table(results))
    console.print("wrote " + ", ".join(str(p) for p in paths.values()), markup=False)


# --------------------------------------------------------------------------- entry point


def main(argv: Optional[list[str]] = None) -> int:
    """Console entry point: run the CLI; user errors -> one line on stderr, exit status 2
    (usage errors are typer's: a usage line and status 2; ``--help`` everywhere)."""
    command = typer.main.get_command(app)
    try:
        command.main(args=argv, prog_name="elastigraph", standalone_mode=True)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except (ElastigraphError, OSError) as e:
        # OSError: a path the user gave that is missing, a file where a folder is needed,
        # no permission, a full disk ... -- the user's to fix, so one line, no traceback.
        msg = str(e) if not isinstance(e, OSError) or not e.filename else f"{e.strerror}: {e.filename}"
        msg = msg or type(e).__name__
        err_console.print(f"[bold red]error:[/] {escape(msg)}", markup=True, highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
