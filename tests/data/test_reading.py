"""One reading path (``data.reading.read_volume``): NIfTI, NRRD, MetaImage and DICOM series through MONAI's readers.

References are independent of the reader: nibabel's own affine for NIfTI, the NRRD header read by pynrrd and
turned into RAS by hand, and a DICOM series written here with pydicom from a NIfTI volume (each slice's
ImagePositionPatient and ImageOrientationPatient computed from the NIfTI affine by the DICOM formula).
"""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from agg2exp_lightning.data.reading import list_dicom_series, read_grid, read_volume
from agg2exp_lightning.errors import DataError

REAL = Path(__file__).parent / "real_ct"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def canonical(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The volume in RAS voxel order (nibabel's as_closest_canonical), to compare volumes stored in other axis orders."""
    img = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine))
    return np.asarray(img.dataobj), img.affine


def write_dicom_series(folder: Path, volume: np.ndarray, affine: np.ndarray, *, series_uid: str, series_number: int,
                       intercept: float = -1024.0, reverse_instances: bool = False) -> None:
    """One DICOM CT slice per ``volume[:, :, k]``: columns run along array axis 0, rows along axis 1.

    DICOM: world_LPS(row r, column c) = IPP + c * PixelSpacing[1] * (row cosines) + r * PixelSpacing[0] * (column cosines).
    """
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    lps = LPS_TO_RAS @ affine  # RAS -> LPS world (the flip is its own inverse)
    di, dj = np.linalg.norm(lps[:3, 0]), np.linalg.norm(lps[:3, 1])
    row_cos, col_cos = lps[:3, 0] / di, lps[:3, 1] / dj
    n = volume.shape[2]
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"slice{k:03d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "CT", series_uid, series_number
        ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
        ds.InstanceNumber = n - k if reverse_instances else k + 1
        ds.ImagePositionPatient = [float(v) for v in (lps @ np.array([0, 0, k, 1.0]))[:3]]
        ds.ImageOrientationPatient = [float(v) for v in (*row_cos, *col_cos)]
        ds.PixelSpacing = [float(dj), float(di)]  # [between rows, between columns]
        ds.SliceThickness = float(np.linalg.norm(lps[:3, 2]))
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope = intercept, 1.0
        stored = (volume[:, :, k].T - intercept).astype(np.uint16)  # pixel_array[r, c] = volume[c, r, k]
        ds.PixelData = stored.tobytes()
        pydicom.dcmwrite(str(folder / f"slice{k:03d}.dcm"), ds, enforce_file_format=True)


@pytest.fixture(scope="module")
def lps_volume():
    """A 12 x 10 x 7 int16 volume (distinct values) on an LPS grid of 0.7 x 0.8 x 2.5 mm with a shifted origin."""
    data = (np.arange(12 * 10 * 7).reshape(12, 10, 7) % 2000 - 1000).astype(np.int16)
    affine = np.array([[-0.7, 0, 0, 40.0], [0, -0.8, 0, 25.0], [0, 0, 2.5, -120.0], [0, 0, 0, 1]])
    return data, affine


@pytest.mark.parametrize("reverse", [False, True], ids=["instances_ascending", "instances_descending"])
def test_dicom_series_written_from_nifti_reads_back_with_its_orientation_spacing_and_values(tmp_path, lps_volume, reverse):
    pytest.importorskip("pydicom")
    data, affine = lps_volume
    nib.save(nib.Nifti1Image(data, affine), str(tmp_path / "ct.nii.gz"))
    nifti, nifti_affine = read_volume(tmp_path / "ct.nii.gz")
    write_dicom_series(tmp_path / "dicom", nifti, nifti_affine, series_uid="1.2.3.4", series_number=3, reverse_instances=reverse)
    got, got_affine = read_volume(tmp_path / "dicom", what="CT")
    want_c, want_aff = canonical(data, affine)
    got_c, got_aff = canonical(got, got_affine)
    np.testing.assert_allclose(got_aff, want_aff, atol=1e-4)
    np.testing.assert_array_equal(got_c, want_c)
    # slices stack in InstanceNumber order: descending numbers give a slice axis running inferior, the world the same
    assert nib.aff2axcodes(got_affine) == ("L", "P", "I" if reverse else "S")
    np.testing.assert_allclose(np.linalg.norm(got_affine[:3, :3], axis=0), [0.7, 0.8, 2.5], atol=1e-5)


def test_dicom_folder_with_two_series_lists_them_and_reads_the_one_picked(tmp_path, lps_volume):
    pytest.importorskip("pydicom")
    data, affine = lps_volume
    write_dicom_series(tmp_path / "d", data, affine, series_uid="1.2.3.1", series_number=1)
    shifted = np.array(affine)
    shifted[2, 3] += 100.0
    (tmp_path / "d2").mkdir()
    write_dicom_series(tmp_path / "d2", data + 7, shifted, series_uid="1.2.3.2", series_number=2)
    for f in (tmp_path / "d2").iterdir():
        f.rename(tmp_path / "d" / f"b_{f.name}")
    assert [s.uid for s in list_dicom_series(tmp_path / "d")] == ["1.2.3.1", "1.2.3.2"]
    with pytest.raises(DataError, match=r"holds 2 image series; pick one .*series 1 \(7 files.*1\.2\.3\.1.*series 2 \(7 files"):
        read_volume(tmp_path / "d", what="CT")
    got, got_affine = read_volume(tmp_path / "d", series="2")
    assert got_affine[2, 3] == pytest.approx(shifted[2, 3]) and np.array_equal(canonical(got, got_affine)[0], canonical(data + 7, shifted)[0])
    got1, _ = read_volume(tmp_path / "d", series="1.2.3.1")
    assert np.array_equal(canonical(got1, got_affine)[0], canonical(data, affine)[0])
    with pytest.raises(DataError, match=r"has no series '9'; its series: series 1"):
        read_volume(tmp_path / "d", series="9")


def test_dicom_folder_without_an_image_series(tmp_path):
    (tmp_path / "notes.txt").write_text("not DICOM\n")
    with pytest.raises(DataError, match=r"^CT: .* holds no DICOM image series \(1 files"):
        read_volume(tmp_path, what="CT")


def test_nrrd_lps_affine_is_the_header_turned_into_ras(tmp_path, lps_volume):
    import nrrd

    data, _ = lps_volume
    directions = np.array([[0.7, 0.0, 0.1], [0.0, 0.8, 0.0], [0.0, 0.0, 2.5]])  # rows: axis vectors in LPS (one oblique)
    origin = np.array([-40.0, -25.0, -120.0])
    nrrd.write(str(tmp_path / "v.nrrd"), data, {"space": "left-posterior-superior", "space directions": directions,
                                                "space origin": origin})
    got, affine = read_volume(tmp_path / "v.nrrd")
    want = np.eye(4)
    want[:3, :3], want[:3, 3] = directions.T, origin
    np.testing.assert_allclose(affine, LPS_TO_RAS @ want, atol=1e-6)
    np.testing.assert_array_equal(got, data)
    # another anatomical space: right-anterior-inferior has every axis of RAS but the third flipped
    nrrd.write(str(tmp_path / "rai.nrrd"), data, {"space": "right-anterior-inferior", "space directions": directions,
                                                  "space origin": origin})
    np.testing.assert_allclose(read_volume(tmp_path / "rai.nrrd")[1], np.diag([1.0, 1, -1, 1]) @ want, atol=1e-6)


def test_real_crops_keep_their_lps_grids():
    ct, ct_affine = read_volume(REAL / "chest_cta_crop.nii.gz")
    assert ct.shape == (64, 48, 48) and ct.dtype == np.int16 and nib.aff2axcodes(ct_affine) == ("L", "P", "S")
    np.testing.assert_allclose(ct_affine, nib.load(str(REAL / "chest_cta_crop.nii.gz")).affine)
    np.testing.assert_allclose(np.diag(ct_affine)[:3], [-1.5, -1.5, 1.5])
    image, affine = read_volume(REAL / "lung2_image_crop.nrrd")
    tumour, tumour_affine = read_volume(REAL / "lung2_label_crop.nrrd")
    assert image.shape == tumour.shape == (128, 112, 16) and nib.aff2axcodes(affine) == ("L", "P", "S")
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), [0.6269531, 0.6269531, 5.0], atol=1e-6)
    np.testing.assert_allclose(tumour_affine, affine)
    assert int((tumour > 0).sum()) == 24644 and -1024 <= image.min() and image.max() < 3000
    assert read_grid(REAL / "chest_cta_crop.nii.gz")[0] == (64, 48, 48)


def test_metaimage_through_itk_matches_the_nifti(tmp_path, lps_volume):
    itk = pytest.importorskip("itk")
    data, affine = lps_volume
    nib.save(nib.Nifti1Image(data, affine), str(tmp_path / "v.nii.gz"))
    itk.imwrite(itk.imread(str(tmp_path / "v.nii.gz")), str(tmp_path / "v.mha"))
    got, got_affine = read_volume(tmp_path / "v.mha")
    np.testing.assert_allclose(got_affine, affine, atol=1e-5)
    np.testing.assert_array_equal(got, data)


def test_bad_files_one_line_each_naming_file_and_reader(tmp_path):
    (tmp_path / "bad.nrrd").write_bytes(b"NRRD0004\ngarbage\n")
    with pytest.raises(DataError, match=r"^x: cannot read .*bad\.nrrd as NRRD with MONAI's NrrdReader \(") as err:
        read_volume(tmp_path / "bad.nrrd", what="x")
    assert "\n" not in str(err.value)
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.float32), np.eye(4)), str(tmp_path / "t.nii.gz"))
    with pytest.raises(DataError, match=r"t\.nii\.gz has shape \(4, 4, 4, 3\), expected a 3D volume \(this is a 4D volume"):
        read_volume(tmp_path / "t.nii.gz")
    (tmp_path / "scan.png").write_bytes(b"\x89PNG")
    with pytest.raises(DataError, match=r"scan\.png is not a format the toolkit reads; expected a 3D scan as NIfTI"):
        read_volume(tmp_path / "scan.png")
