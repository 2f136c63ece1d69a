"""Networks whose normalized layers compute their statistics over few values (issue 15).

A batch statistic of the main job's CNN pools N × 28 × 28 values per channel at its first norm
(1,568 at batch 2) and N × 14 × 14 at its second: batch norm barely notices a small batch there.
The seeds' small-batch claims are about statistics over few values, as the late, small feature
maps of an ImageNet network give them. Two designs give them on 28 × 28 images:

- `small_maps_cnn`: four 3 × 3 conv stages at 28, 14, 7 and 3 pixels, each conv → norm → ReLU
  (→ max-pool 2 between stages), then a global average pool and a linear classifier. Its last
  two norms pool N × 49 and N × 9 values per channel: 18 at batch 2.
- `fc_net`: 784 → 100 → 100 → 10, each hidden layer linear → norm → ReLU. A BatchNorm1d
  statistic pools N values: 2 at batch 2.

`DESIGNS` maps each `--design` name to its builder `(norm, total_steps, width) -> model`, and
`DESIGN_NORMS` to the norms it takes.
"""

from __future__ import annotations

from collections.abc import Callable

from tinynorm import nn
from tinynorm.nn.utils import weight_norm

from .mnist import NORMS, build_model, norm_layer

FC_NORMS = ("none", "bn", "brn", "ln", "gn", "mobn", "rms", "wn")


def small_maps_cnn(kind: str, total_steps: int, width: int = 8) -> nn.Sequential:
    """conv 3×3 → norm → ReLU at 28, 14, 7 and 3 pixels (max-pool 2 between), channels
    width, 2·width, 4·width, 4·width; global average pool; linear classifier."""
    channels = (width, 2 * width, 4 * width, 4 * width)
    convs = [nn.Conv2d(c_in, c, 3, padding=1) for c_in, c in zip((1, *channels), channels)]
    head = nn.Linear(channels[-1], 10)
    if kind == "wn":
        for layer in (*convs, head):
            weight_norm(layer)
    layers: list[nn.Module] = []
    for stage, (conv, c, size) in enumerate(zip(convs, channels, (28, 14, 7, 3))):
        if stage:
            layers.append(nn.MaxPool2d(2))
        layers += [conv, norm_layer(kind, c, size, total_steps), nn.ReLU()]
    return nn.Sequential(*layers, nn.AvgPool2d(3), nn.Flatten(), head)


def feature_norm(kind: str, features: int, total_steps: int) -> nn.Module:
    """The normalization layer `kind` for (N, features) activations (`wn`: mean-only BN)."""
    layers: dict[str, Callable[[], nn.Module]] = {
        "none": nn.Identity,
        "bn": lambda: nn.BatchNorm1d(features),
        "brn": lambda: nn.BatchRenorm1d(features),
        "ln": lambda: nn.LayerNorm(features),
        "gn": lambda: nn.GroupNorm(4, features),
        "mobn": lambda: nn.MeanOnlyBatchNorm1d(features),
        "wn": lambda: nn.MeanOnlyBatchNorm1d(features),
        "rms": lambda: nn.RMSNorm(features),
    }
    layer = layers[kind]()
    if isinstance(layer, nn.BatchRenorm1d):
        layer.scale_schedule(total_steps)
    return layer


def fc_net(kind: str, total_steps: int, width: int = 100) -> nn.Sequential:
    """784 → width → width → 10, each hidden layer linear → norm → ReLU."""
    linears = [nn.Linear(784, width), nn.Linear(width, width), nn.Linear(width, 10)]
    if kind == "wn":
        for layer in linears:
            weight_norm(layer)
    hidden = [[linear, feature_norm(kind, width, total_steps), nn.ReLU()] for linear in linears[:2]]
    return nn.Sequential(nn.Flatten(), *hidden[0], *hidden[1], linears[2])


DESIGNS: dict[str, Callable[[str, int, int], nn.Sequential]] = {
    "cnn": build_model,
    "small-maps": small_maps_cnn,
    "fc": fc_net,
}
DESIGN_NORMS = {"cnn": NORMS, "small-maps": NORMS, "fc": FC_NORMS}
