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
from camkit.data.mosaic import (
    ImageNetGrid,
    ImagePool,
    MosaicItem,
    MosaicMultiLabel,
    fashion_pool,
    imagenet_pool,
    mask_boxes,
)
from camkit.data.multilabel import (
    ImageLoadError,
    MultiLabelDataset,
    MultiLabelImages,
    Skipped,
    collate_skipping,
    dataset_from_spec,
    to_unit_tensor,
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
from camkit.data.synthetic import SyntheticMultiLabel

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
    "ImageLoadError",
    "ImageNetGrid",
    "ImagePool",
    "MosaicItem",
    "MosaicMultiLabel",
    "MultiLabelDataset",
    "MultiLabelImages",
    "Skipped",
    "SyntheticMultiLabel",
    "collate_skipping",
    "dataset_from_spec",
    "fashion_pool",
    "imagenet_pool",
    "mask_boxes",
    "to_unit_tensor",
]
