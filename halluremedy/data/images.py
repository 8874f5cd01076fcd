"""Images as model-ready tensors: resized to the vision tower's input, kept in [0, 1] until normalised.

Keeping the [0, 1] tensor lets the same batch feed the clean path (``normalize``) and POVID's
noised path (``vlm_kernels.diffusion_noise``, which fuses the noise with the normalisation).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from halluremedy.data.coco import CocoDataset


class ImageBank:
    """Resized [0, 1] pixel tensors of a dataset's images, keyed by file name.

    ``images01``: (N, C, H, W) float32 in [0, 1]; built once with the processor's resize and crop
    (``do_normalize=False``), so it matches what the processor feeds the model up to normalisation.
    """

    def __init__(self, dataset: CocoDataset, image_processor, *, batch_size: int = 256, progress: bool = False):
        self.mean = torch.tensor(image_processor.image_mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(image_processor.image_std, dtype=torch.float32).view(1, -1, 1, 1)
        self.index = {im.file_name: k for k, im in enumerate(dataset.images)}
        chunks = []
        for start in tqdm(range(0, len(dataset.images), batch_size), desc="images", disable=not progress, leave=False):
            pil = [dataset.load_image(im) for im in dataset.images[start:start + batch_size]]
            out = image_processor(pil, do_normalize=False, return_tensors="pt")
            chunks.append(out["pixel_values"].float())
        self.images01 = torch.cat(chunks) if chunks else torch.empty(0)

    def __contains__(self, file_name: str) -> bool:
        return file_name in self.index

    def get01(self, file_names: Sequence[str]) -> torch.Tensor:
        """(B, C, H, W) [0, 1] images for ``file_names``."""
        return self.images01[[self.index[f] for f in file_names]]

    def normalize(self, images01: torch.Tensor) -> torch.Tensor:
        """CLIP normalisation ``(x - mean) / std`` of a (B, C, H, W) [0, 1] batch."""
        return (images01 - self.mean.to(images01.device)) / self.std.to(images01.device)

    def pixels(self, file_names: Sequence[str]) -> torch.Tensor:
        """(B, C, H, W) normalised pixel values, as the processor would produce them."""
        return self.normalize(self.get01(file_names))
