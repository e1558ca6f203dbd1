"""SOP class and transfer syntax names (design §4 match): seed table, keywords, UIDs."""

from __future__ import annotations

import pydicom.uid
import pytest
from pynetdicom import sop_class as pynetdicom_sop_class

from router.dicom.sopclass import (
    SEED_ALIASES,
    SEED_UID_TYPOS,
    UnknownName,
    is_storage_class,
    resolve_sop_class,
    resolve_transfer_syntax,
    sop_class_name,
)
from router.errors import RouterError, did_you_mean
from tests.seed import SEED_SOP_CLASSES

SEED_IDS = [name for _, name in SEED_SOP_CLASSES]


def test_seed_table_has_130_rows() -> None:
    """The seed table parses to the 130 storage SOP classes the design refers to."""
    assert len(SEED_SOP_CLASSES) == 130


@pytest.mark.parametrize(("uid", "name"), SEED_SOP_CLASSES, ids=SEED_IDS)
def test_seed_name_and_uid_resolve_to_same_uid(uid: str, name: str) -> None:
    """A seed row's keyword and its UID resolve to the same (real) SOP Class UID."""
    assert resolve_sop_class(name) == resolve_sop_class(uid)


@pytest.mark.parametrize(("uid", "name"), SEED_SOP_CLASSES, ids=SEED_IDS)
def test_seed_uid_resolves_to_itself_or_its_corrected_uid(uid: str, name: str) -> None:
    """A seed UID resolves to itself, except the seed's two typos, which map to the real UID."""
    assert resolve_sop_class(uid) == SEED_UID_TYPOS.get(uid, uid)


@pytest.mark.parametrize(("uid", "name"), SEED_SOP_CLASSES, ids=SEED_IDS)
def test_seed_name_resolves_to_a_storage_class(uid: str, name: str) -> None:
    """Every seed keyword resolves to a SOP class the libraries know as Storage."""
    assert is_storage_class(resolve_sop_class(name))


@pytest.mark.parametrize(
    ("typo", "real", "keyword"),
    [
        (
            "1.2.840.10008.5.1.4.1.1.1.1.1.1",
            "1.2.840.10008.5.1.4.1.1.1.1.1",
            "DigitalXRayImageStorageForProcessing",
        ),
        (
            "1.2.840.10008.5.1.1.4.1.1.3.1",
            "1.2.840.10008.5.1.4.1.1.1.3.1",
            "DigitalIntraOralXRayImageStorageForProcessing",
        ),
    ],
)
def test_seed_uid_typos_map_to_real_class(typo: str, real: str, keyword: str) -> None:
    """The seed's two mistyped UIDs resolve to the real class's UID."""
    assert resolve_sop_class(typo) == real == getattr(pydicom.uid, keyword)


def test_seed_typo_rows_are_in_the_seed() -> None:
    """The two UID typos handled by the router are really in the seed table."""
    assert set(SEED_UID_TYPOS) <= {uid for uid, _ in SEED_SOP_CLASSES}


@pytest.mark.parametrize("old", sorted(SEED_ALIASES))
def test_seed_alias_resolves_like_todays_keyword(old: str) -> None:
    """Each older seed spelling resolves to the same UID as today's keyword."""
    assert resolve_sop_class(old) == resolve_sop_class(SEED_ALIASES[old])


@pytest.mark.parametrize(
    "keyword",
    [
        "CTImageStorage",
        "EnhancedCTImageStorage",
        "MRImageStorage",
        "DigitalXRayImageStorageForPresentation",
        "UltrasoundMultiFrameImageStorage",
        "KeyObjectSelectionDocumentStorage",
        "XRayRadiationDoseSRStorage",
        "BasicTextSRStorage",
        "EncapsulatedPDFStorage",
    ],
)
def test_pydicom_keyword_resolves(keyword: str) -> None:
    """A pydicom UID keyword resolves to pydicom's UID for it."""
    assert resolve_sop_class(keyword) == getattr(pydicom.uid, keyword)


@pytest.mark.parametrize(
    "name",
    [
        "CTImageStorage",
        "PseudoColorSoftcopyPresentationStageStorage",
        "OphthlamicOpticalCoherenceTomographyBscanVolumeAnalysisStorage",
        "RTBrachyApplicationSetupDeliveryInstructionsStorage",
        "WaveformPresentationStateStorage",
    ],
)
def test_pynetdicom_name_resolves(name: str) -> None:
    """A pynetdicom storage SOP class name (even one pydicom spells differently) resolves."""
    assert resolve_sop_class(name) == getattr(pynetdicom_sop_class, name)


def test_private_uid_resolves_to_itself() -> None:
    """A valid UID nobody knows (a private SOP class) resolves to itself."""
    assert resolve_sop_class("1.2.826.0.1.3680043.9.9999.1") == "1.2.826.0.1.3680043.9.9999.1"


def test_private_uid_is_not_a_storage_class() -> None:
    """A private UID is not reported as a known Storage SOP class."""
    assert not is_storage_class("1.2.826.0.1.3680043.9.9999.1")


def test_non_storage_sop_class_is_not_a_storage_class() -> None:
    """Verification resolves but is not a Storage SOP class."""
    assert not is_storage_class(resolve_sop_class("Verification"))


@pytest.mark.parametrize("uid", ["1.2.03", "1.2.", "1..2", "1.2.840.abc"])
def test_invalid_uid_is_refused(uid: str) -> None:
    """A malformed UID is refused with a 'not a valid UID' error."""
    with pytest.raises(ValueError, match="not a valid UID"):
        resolve_sop_class(uid)


@pytest.mark.parametrize(
    ("typo", "suggestion"),
    [
        ("CTImageStorag", "CTImageStorage"),
        ("MRImageStorage2", "MRImageStorage"),
        ("EnhancedSRStorag", "EnhancedSRStorage"),
        ("XRayRadiationDoseSR", "XRayRadiationDoseSRStorage"),
    ],
)
def test_unknown_sop_class_has_did_you_mean(typo: str, suggestion: str) -> None:
    """An unknown SOP class keyword is refused with a did-you-mean naming the close keyword."""
    with pytest.raises(UnknownName, match=f"did you mean .*{suggestion}"):
        resolve_sop_class(typo)


def test_unknown_sop_class_without_close_match_has_no_hint() -> None:
    """A name close to nothing is refused without a did-you-mean."""
    with pytest.raises(UnknownName) as caught:
        resolve_sop_class("Zzzzzz")
    assert "did you mean" not in str(caught.value)
    assert "'Zzzzzz'" in str(caught.value)


def test_unknown_name_is_a_value_error() -> None:
    """UnknownName is a ValueError, so Pydantic validators turn it into a located error."""
    assert issubclass(UnknownName, ValueError)


def test_unknown_name_is_in_the_error_tree() -> None:
    """UnknownName is a RouterError, the one raised from router.errors."""
    assert issubclass(UnknownName, RouterError)


def test_did_you_mean_offers_at_most_three_best_first() -> None:
    """did_you_mean() quotes up to three close matches, best first, the last after 'or'."""
    got = did_you_mean("prot", {"port", "ports", "portal", "part", "sport", "host"})
    assert got == "; did you mean 'port', 'part' or 'sport'?"


def test_did_you_mean_quotes_a_single_match() -> None:
    """One close match is quoted alone."""
    assert did_you_mean("archiv", {"archive", "pacs"}) == "; did you mean 'archive'?"


def test_did_you_mean_is_empty_when_nothing_is_close() -> None:
    """Nothing close: no hint at all, the caller says what there is."""
    assert did_you_mean("zzz", {"archive", "pacs"}) == ""


@pytest.mark.parametrize(
    ("name", "uid"),
    [
        ("ExplicitVRLittleEndian", "1.2.840.10008.1.2.1"),
        ("ImplicitVRLittleEndian", "1.2.840.10008.1.2"),
        ("JPEGBaseline8Bit", "1.2.840.10008.1.2.4.50"),
        ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1"),
        ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.90"),
    ],
)
def test_transfer_syntax_keyword_or_uid_resolves(name: str, uid: str) -> None:
    """A transfer syntax keyword or UID resolves to the UID."""
    assert resolve_transfer_syntax(name) == uid


def test_unknown_transfer_syntax_has_did_you_mean() -> None:
    """An unknown transfer syntax keyword is refused with a did-you-mean."""
    with pytest.raises(UnknownName, match="did you mean 'ExplicitVRLittleEndian'"):
        resolve_transfer_syntax("ExplicitVRLittleEndan")


def test_sop_class_keyword_is_not_a_transfer_syntax() -> None:
    """A SOP class keyword is refused where a transfer syntax is expected."""
    with pytest.raises(UnknownName, match="transfer syntax"):
        resolve_transfer_syntax("CTImageStorage")


def test_transfer_syntax_keyword_is_not_a_sop_class() -> None:
    """A transfer syntax keyword is refused where a SOP class is expected."""
    with pytest.raises(UnknownName, match="SOP class"):
        resolve_sop_class("ExplicitVRLittleEndian")


@pytest.mark.parametrize(
    ("uid", "name"),
    [
        ("1.2.840.10008.5.1.4.1.1.2", "CTImageStorage"),
        ("1.2.840.10008.5.1.4.1.1.88.67", "XRayRadiationDoseSRStorage"),
        ("1.2.826.0.1.3680043.9.9999.1", "1.2.826.0.1.3680043.9.9999.1"),
    ],
)
def test_sop_class_name_for_display(uid: str, name: str) -> None:
    """sop_class_name gives today's keyword, or the UID itself when unknown."""
    assert sop_class_name(uid) == name
