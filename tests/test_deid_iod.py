"""The IOD Types the conditional actions of Table E.1-1 depend on (router.dicom.deid_iod),
and the form each Type takes; on a CT header through the transform."""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage

from router.dicom.deid import Context, Profile, deidentify
from router.dicom.deid_iod import iod_types, resolve, types_for

CT = types_for(CTImageStorage)
SR = types_for("1.2.840.10008.5.1.4.1.1.88.33")  # Comprehensive SR


def test_the_data_counts_its_sop_classes_iods_and_entries() -> None:
    """175 SOP classes of 2024b onto 167 IODs, 1032 Type 1 or 2 entries."""
    data = iod_types()
    assert data.edition == "2024b"
    assert (len(data.sop_classes), len(data.iods)) == (175, 167)
    assert sum(len(types) for types in data.iods.values()) == 1032


def test_known_types_of_the_ct_image_iod() -> None:
    """CT: Patient ID Type 2, Content Date Type 2 (General Image), Station Name not listed."""
    assert CT is not None
    assert (CT[0x00100020], CT[0x00080023]) == ("2", "2")
    assert 0x00081010 not in CT  # Type 3 in General Equipment: not listed
    assert SR is not None and SR[0x00080023] == "1"  # SR Document General: Type 1


def test_a_type_2_attribute_is_emptied() -> None:
    """Content Date (Z/D), Type 2 in CT: Z."""
    assert resolve("Z/D", CT, 0x00080023) == "Z"


def test_a_type_3_attribute_is_removed() -> None:
    """Station Name (X/Z/D) and Referenced Image Sequence (X/Z/U*), Type 3 in CT: X."""
    assert resolve("X/Z/D", CT, 0x00081010) == "X"
    assert resolve("X/Z/U*", CT, 0x00081140) == "X"


def test_a_type_1_attribute_gets_a_dummy() -> None:
    """Content Date (Z/D), Type 1 in SR: D; Observation DateTime (X/D) Type 1 in SR: D."""
    assert resolve("Z/D", SR, 0x00080023) == "D"
    assert resolve("X/D", SR, 0x0040A032) == "D"


def test_a_type_1_reference_sequence_keeps_its_replaced_uids() -> None:
    """X/Z/U* where the sequence is Type 1: U (kept, its UIDs replaced)."""
    assert resolve("X/Z/U*", {0x00081140: "1"}, 0x00081140) == "U"


def test_an_unknown_sop_class_takes_the_form_removing_most() -> None:
    """No Types: X/Z, X/D, X/Z/D, X/Z/U* remove, Z/D empties; plain actions unchanged."""
    assert types_for("1.2.3.4") is None
    removing = {t: resolve(t, None, 0x00080023) for t in ("X/Z", "X/D", "X/Z/D", "X/Z/U*", "Z/D")}
    assert removing == {"X/Z": "X", "X/D": "X", "X/Z/D": "X", "X/Z/U*": "X", "Z/D": "Z"}
    assert resolve("D", None, 0x00080023) == "D"


def _ct_header() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = "1.2.3.4"
    ds.ContentDate = "20240105"
    ds.StationName = "CT-ROOM-7"
    item = Dataset()
    item.ContentDate = "20240106"  # Z/D
    item.StationName = "NESTED-7"
    ds.ReferencedInstanceSequence = Sequence([item])
    return ds


def test_the_transform_uses_the_ct_types_at_the_top() -> None:
    """Top level: Content Date Type 2 emptied, Station Name Type 3 removed."""
    ds = _ct_header()
    ctx = Context.of(Profile(b"k" * 32), ds)
    assert ctx.types is CT
    deidentify(ds, ctx)
    assert "ContentDate" in ds and not ds.ContentDate
    assert "StationName" not in ds


def test_the_transform_gives_a_type_1_attribute_a_dummy_only_at_the_top() -> None:
    """Comprehensive SR: Content Date (Type 1) the dummy date; in a nested item: emptied."""
    ds = _ct_header()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"
    deidentify(ds, Context.of(Profile(b"k" * 32), ds))
    assert ds.ContentDate == "19000101"
    item = ds.ReferencedInstanceSequence[0]
    assert "ContentDate" in item and not item.ContentDate
    assert "StationName" not in item
