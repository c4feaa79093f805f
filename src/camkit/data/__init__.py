"""Image IO and preprocessing, and real sample images read from installed packages."""

from camkit.data.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocess,
    ResizePlan,
    load_image,
    to_rgb,
    to_tensor,
)
from camkit.data.samples import (
    AnnotatedImage,
    SampleFile,
    foolbox_samples,
    imagenet_samples,
    polygon_mask,
    quokka,
    resize_annotated,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "AnnotatedImage",
    "Preprocess",
    "ResizePlan",
    "SampleFile",
    "foolbox_samples",
    "imagenet_samples",
    "load_image",
    "polygon_mask",
    "quokka",
    "resize_annotated",
    "to_rgb",
    "to_tensor",
]
