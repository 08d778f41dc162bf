"""pix2pix training (``train --arch pix2pix``): the segmentation network against a PatchGAN discriminator.

The generator is the run's ``unet``, trained on its usual loss (``--loss``, cross-entropy by default) plus
``gan_weight`` times the adversarial term: the binary cross-entropy of the discriminator calling its (image,
softmax) pairs real. After each of the generator's forward passes the discriminator
(:class:`rockseg.models.pix2pix.PatchDiscriminator`) takes one Adam step (betas 0.5, 0.999, as in pix2pix) to tell
(image, one-hot labels) pairs, real, from (image, softmax) pairs, generated. With sparse labels the real
segmentation takes the generator's own (detached) probabilities at unlabelled voxels, so they tell the
discriminator nothing. :class:`_Adversary` holds the discriminator and its optimizer; the checkpoint keeps both
(:meth:`_Adversary.state_dict`), and the model file only the generator.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from rockseg.models.pix2pix import PatchDiscriminator
from rockseg.training.hardware import _autocast

#: Width of the discriminator's first layer.
DISCRIMINATOR_CHANNELS = 32


def discriminator_layers(size: int) -> int:
    """Strided layers of the discriminator for tiles of edge ``size``: 3 (54-voxel patches), fewer for tiles too
    small to halve that often and keep 2 voxels."""
    layers = 3
    while layers > 1 and (size % 2**layers or size < 2 ** (layers + 1)):
        layers -= 1
    return layers


class _Adversary:
    """The discriminator of a pix2pix run, its optimizer, and the two terms of the game."""

    def __init__(
        self, *, dims: int, classes: int, size: int, device: torch.device, bf16: bool, lr: float, weight: float,
        ignore: int | None,
    ) -> None:
        self.net = PatchDiscriminator(dims, 1, classes, DISCRIMINATOR_CHANNELS, discriminator_layers(size)).to(device)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=lr, betas=(0.5, 0.999))
        self.classes, self.device, self.bf16, self.weight, self.ignore = classes, device, bf16, weight, ignore
        self.last_loss = torch.zeros((), device=device)

    def _judge(self, x: torch.Tensor, segmentation: torch.Tensor) -> torch.Tensor:
        with _autocast(self.device, self.bf16):
            return self.net(x, segmentation).float()

    def generator_term(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """``weight`` times the cross-entropy of the discriminator calling the generated pairs real."""
        score = self._judge(x, logits.softmax(1))
        return self.weight * F.binary_cross_entropy_with_logits(score, torch.ones_like(score))

    def discriminator_step(self, x: torch.Tensor, logits: torch.Tensor, target: torch.Tensor) -> None:
        """One optimizer step of the discriminator on real (one-hot ``target``) and generated (``logits``) pairs."""
        fake = logits.detach().float().softmax(1)
        valid = None if self.ignore is None else target != self.ignore
        safe = target if valid is None else torch.where(valid, target, 0)
        real = F.one_hot(safe, self.classes).movedim(-1, 1).to(fake.dtype)
        if valid is not None:
            real = torch.where(valid.unsqueeze(1), real, fake)
        self.optimizer.zero_grad(set_to_none=True)  # also drops what the generator's term left here
        s_real, s_fake = self._judge(x, real), self._judge(x, fake)
        loss = 0.5 * (F.binary_cross_entropy_with_logits(s_real, torch.ones_like(s_real))
                      + F.binary_cross_entropy_with_logits(s_fake, torch.zeros_like(s_fake)))
        loss.backward()
        self.optimizer.step()
        self.last_loss = loss.detach()

    def state_dict(self) -> dict[str, Any]:
        return {"net": {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()},
                "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
