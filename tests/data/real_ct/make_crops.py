"""Write the small crops of the real scans in this folder from ``/work/shared/data/real_ct`` (see README.md).

Run from the repository root: ``python tests/data/real_ct/make_crops.py [SOURCE_FOLDER]``. Each crop keeps the
source's own grid (voxel size, axis directions, LPS) with its origin moved to the crop's first voxel; values
are copied unchanged.
"""
from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np

HERE = Path(__file__).resolve().parent
#: (source, crop, index ranges) per file; the chest CTA crop holds part of the heart, the lung crop the tumour.
CROPS = {
    "chest_cta.nii.gz": ("chest_cta_crop.nii.gz", (slice(96, 160), slice(24, 72), slice(64, 112))),
    "chest_cta_heart.nii.gz": ("chest_cta_heart_crop.nii.gz", (slice(96, 160), slice(24, 72), slice(64, 112))),
    "lung2_image.nrrd": ("lung2_image_crop.nrrd", (slice(296, 424), slice(312, 424), slice(12, 28))),
    "lung2_label.nrrd": ("lung2_label_crop.nrrd", (slice(296, 424), slice(312, 424), slice(12, 28))),
}


def main(source: Path) -> None:
    for name, (crop, box) in CROPS.items():
        if name.endswith(".nii.gz"):
            img = nib.load(str(source / name))
            out = img.slicer[box]  # nibabel moves the affine's origin to the crop's first voxel
            nib.save(nib.Nifti1Image(np.asarray(out.dataobj), out.affine, out.header), str(HERE / crop))
        else:
            data, header = nrrd.read(str(source / name))
            first = np.array([s.start for s in box], dtype=float)
            header = dict(header)
            header["space origin"] = np.asarray(header["space origin"]) + header["space directions"].T @ first
            header["sizes"] = np.array(data[box].shape)
            nrrd.write(str(HERE / crop), np.ascontiguousarray(data[box]), header)
        print(crop, (HERE / crop).stat().st_size, "bytes")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/work/shared/data/real_ct"))
