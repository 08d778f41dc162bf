"""Networks (2D and 3D from one definition) and the rockseg model file.

The architectures of :data:`ARCHITECTURES` (``unet``, ``resunet``, ``uresnet``, ``linknet``, ``unetpp``,
``deeplabv3plus``, ``pspnet``) all take ``spatial_dims, in_channels, classes, base_channels, depth, norm, act``
and, except ``resunet``, an ``encoder``: None for the architecture's own, or a standard backbone of
:data:`ENCODERS` whose weights :func:`load_encoder_weights` reads from a local torchvision state dict
(inflated to 3D where needed) and :func:`freeze_encoder` can freeze. Every network takes (N, in_channels,
*spatial) floats whose spatial edges are multiples of its ``divisor`` (:func:`tile_multiple` gives it without
building the weights) and returns (N, classes, *spatial) logits.

The modules, in reading order:

``blocks``
    dimension-generic layers, the argument checks every network shares, convolution and residual blocks.
``encoders``
    the feature pyramids: the backbones of :data:`ENCODERS` (ResNet, VGG) and the plain UNet encoder.
``centre``
    the UNet decoder that computes only the kept centre of a tile (:func:`centre_logits`).
``unet``, ``resunet``, ``linknet``, ``unetpp``, ``deeplab``, ``pspnet``
    one network family each.
``registry``
    :data:`ARCHITECTURES` by name, :func:`build_model`, :func:`tile_multiple`.
``modelfile``
    the model file (its keys are listed there): :func:`save_model_file`, :func:`read_model_file`,
    :func:`load_model`.
``pretrained``
    :func:`load_encoder_weights` from a local file, :func:`freeze_encoder`.
``folding``
    :func:`fold_batch_norm` for inference.
``card``
    the model card and description ``rockseg models`` prints: :func:`describe_model`, :func:`set_model_card`.

This package imports torch; of rockseg it may import only :mod:`rockseg.errors` and :mod:`rockseg.vocabulary`.
Code inside it imports from the precise module; the names below are re-exported for everyone else.
"""

from __future__ import annotations

from rockseg.models.blocks import BasicBlock, ConvBlock, Down, PreActBlock, Up
from rockseg.models.card import describe_model, resolve_model, set_model_card, shipped_models
from rockseg.models.centre import centre_logits
from rockseg.models.deeplab import ASPP, DeepLabV3Plus
from rockseg.models.encoders import ENCODERS, PlainEncoder, ResNetEncoder, VGGEncoder
from rockseg.models.folding import fold_batch_norm
from rockseg.models.linknet import LinkDecoder, LinkNet
from rockseg.models.modelfile import (
    FORMAT, FORMAT_VERSION, file_sha256, load_model, model_from_payload, read_model_file, save_model_file,
)
from rockseg.models.pretrained import freeze_encoder, load_encoder_weights
from rockseg.models.pspnet import PSPNet, PyramidPooling
from rockseg.models.registry import ARCHITECTURES, build_model, tile_multiple
from rockseg.models.resunet import ResUNet, UResNet
from rockseg.models.unet import UNet
from rockseg.models.unetpp import UNetPlusPlus

__all__ = [
    "ARCHITECTURES", "ASPP", "BasicBlock", "ConvBlock", "DeepLabV3Plus", "Down", "ENCODERS", "FORMAT",
    "FORMAT_VERSION", "LinkDecoder", "LinkNet", "PSPNet", "PlainEncoder", "PreActBlock", "PyramidPooling",
    "ResNetEncoder", "ResUNet", "UNet", "UNetPlusPlus", "UResNet", "Up", "VGGEncoder", "build_model",
    "centre_logits", "describe_model", "file_sha256", "fold_batch_norm", "freeze_encoder", "load_encoder_weights", "load_model",
    "model_from_payload", "read_model_file", "resolve_model", "save_model_file", "set_model_card",
    "shipped_models", "tile_multiple",
]
