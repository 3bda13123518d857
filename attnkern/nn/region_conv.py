"""DRConv's dynamic region-aware convolution on attnkern's region kernels."""

from torch import Tensor, nn

from .. import export
from ..ops.region_conv import dynamic_region_conv

__all__ = ["DRConv2d"]


class DRConv2d(nn.Module):
    """Dynamic region-aware convolution (Chen et al., "Dynamic Region-Aware Convolution", CVPR 2021),
    a drop-in for the published ``DRConv2d``.

    A guide convolution splits the output plane into ``region_num`` regions (argmax over its
    channels); a filter generator (``conv_kernel``: adaptive pooling to k×k, 1×1 conv to r², sigmoid,
    grouped 1×1 conv to r·in·out) makes one k×k filter bank per region and sample; each output pixel
    is convolved with its region's filters only — the published code convolves every region
    everywhere and then picks (r× the work and memory). Gradients are the published ones: x and the
    filters through the selected region; the guide through DRConv's softmax straight-through rule.

    Args:
        in_channels, out_channels, kernel_size: as ``nn.Conv2d`` (square kernel).
        region_num: number of regions r.
        **kwargs: ``stride``, ``padding``, ``dilation`` of both the guide and the dynamic convolution.

    Exports (ONNX, portable TorchScript / ``torch.export``, see :mod:`attnkern.export`) at any input size:
    the guide pooling (``conv_kernel.0``, the published ``AdaptiveAvgPool2d((k, k))``, which ONNX lacks)
    becomes two pooling matrices built from the input size, and the convolution every region's
    convolution as k·k batched products, then the guide's choice.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, region_num: int = 8, **kwargs):
        super().__init__()
        unknown = set(kwargs) - {"stride", "padding", "dilation"}
        if unknown:
            raise TypeError(f"DRConv2d: unsupported arguments {sorted(unknown)} (stride, padding, dilation are)")
        if region_num < 1:
            raise ValueError(f"DRConv2d: region_num must be >= 1, got {region_num}")
        self.region_num = region_num
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.conv_kernel = nn.Sequential(
            nn.AdaptiveAvgPool2d((kernel_size, kernel_size)),
            nn.Conv2d(in_channels, region_num * region_num, kernel_size=1),
            nn.Sigmoid(),
            nn.Conv2d(region_num * region_num, region_num * in_channels * out_channels, kernel_size=1,
                      groups=region_num),
        )
        self.conv_guide = nn.Conv2d(in_channels, region_num, kernel_size=kernel_size, **kwargs)
        self.kwargs = kwargs

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"DRConv2d: expected input [B, C, H, W], got shape {tuple(x.shape)}")
        k = self.kernel_size
        if export.is_portable():
            kernel = export.adaptive_avg_pool2d(x, (k, k))
            for layer in list(self.conv_kernel)[1:]:
                kernel = layer(kernel)
            conv = export.dynamic_region_conv
        else:
            kernel, conv = self.conv_kernel(x), dynamic_region_conv
        filters = kernel.view(x.shape[0], self.region_num, self.out_channels, self.in_channels, k, k)
        return conv(x, filters, self.conv_guide(x), **self.kwargs)
