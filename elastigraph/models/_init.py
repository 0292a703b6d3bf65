"""Weight initialisations for the CIFAR zoo: PyTorch's own defaults, or open_lth's (the
code the E-LTH authors built on), so that numbers can be compared with theirs."""

from __future__ import annotations

from torch import nn

from ..errors import ModelNameError

INITS = {
    "pytorch": "PyTorch's layer defaults (kaiming-uniform with a=sqrt(5); BatchNorm weight 1, bias 0)",
    "open_lth": "open_lth's model_init='kaiming_normal', batchnorm_init='uniform': conv and linear weights "
                "kaiming_normal_ (fan_in, gain sqrt(2)), biases left at PyTorch's default; BatchNorm weight "
                "~ U(0, 1), bias 0 (models/initializers.py, models/bn_initializers.py)",
}


def apply_init(model: nn.Module, init: str, *, model_name: str) -> nn.Module:
    """Re-initialise ``model`` in place following ``init`` (a key of :data:`INITS`),
    drawing from torch's global generator; returns ``model``."""
    if init not in INITS:
        raise ModelNameError(f"{model_name}: init must be one of {sorted(INITS)}, got {init!r}")
    if init == "open_lth":
        # open_lth calls model.apply(initializer): children before parents, in module order
        def fn(m: nn.Module) -> None:
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.kaiming_normal_(m.weight)
            if isinstance(m, nn.BatchNorm2d):
                nn.init.uniform_(m.weight, 0.0, 1.0)
                nn.init.zeros_(m.bias)

        model.apply(fn)
    return model
