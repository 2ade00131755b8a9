"""Datasets and LightningDataModules: 2D toys, sklearn digits, CIFAR-10 and image folders.

Items are dicts ``{"x": tensor, "y": LongTensor (when labelled)}``; images are ``(C, H, W)``
float32 in ``[-1, 1]``. Import the submodules directly (``shared.data.digits`` ...); this
package imports nothing heavy so other data modules can live beside these.
"""


class DataError(ValueError):
    """Data that cannot be trained on (an all-corrupt dataset, an empty split, ...): a one-line message naming
    the folder or file and what was expected."""
