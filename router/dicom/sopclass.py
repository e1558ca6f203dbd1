"""SOP class and transfer syntax names: what a rule file may write, resolved to UIDs.

pydicom's UID dictionary and pynetdicom's storage registry know today's DICOM keywords.
The pynetdicom Storage Service Class page (our seed) still uses about twenty older
spellings that neither library knows; `SEED_ALIASES` maps only those.
"""

from __future__ import annotations

import re
from functools import cache

from pydicom._uid_dict import UID_dictionary
from pydicom.uid import RE_VALID_UID
from pynetdicom.sop_class import _STORAGE_CLASSES

# Raised here; re-exported so that callers catching it need only this module.
from router.errors import UnknownName as UnknownName

# Older spellings from the seed table -> today's keyword (PS3.6 / pydicom).
SEED_ALIASES: dict[str, str] = {
    "DigitalXRayImagePresentationStorage": "DigitalXRayImageStorageForPresentation",
    "DigitalXRayImageProcessingStorage": "DigitalXRayImageStorageForProcessing",
    "DigitalMammographyXRayImagePresentationStorage": "DigitalMammographyXRayImageStorageForPresentation",
    "DigitalMammographyXRayImageProcessingStorage": "DigitalMammographyXRayImageStorageForProcessing",
    "DigitalIntraOralXRayImagePresentationStorage": "DigitalIntraOralXRayImageStorageForPresentation",
    "DigitalIntraOralXRayImageProcessingStorage": "DigitalIntraOralXRayImageStorageForProcessing",
    "UltrasoundMultiframeImageStorage": "UltrasoundMultiFrameImageStorage",
    "MultiframeSingleBitSecondaryCaptureImageStorage": "MultiFrameSingleBitSecondaryCaptureImageStorage",
    "MultiframeGrayscaleByteSecondaryCaptureImageStorage": "MultiFrameGrayscaleByteSecondaryCaptureImageStorage",
    "MultiframeGrayscaleWordSecondaryCaptureImageStorage": "MultiFrameGrayscaleWordSecondaryCaptureImageStorage",
    "MultiframeTrueColorSecondaryCaptureImageStorage": "MultiFrameTrueColorSecondaryCaptureImageStorage",
    "PseudocolorSoftcopyPresentationStageStorage": "PseudoColorSoftcopyPresentationStateStorage",
    "SegmentatedVolumeRenderingVolumetricPresentationStateStorage": "SegmentedVolumeRenderingVolumetricPresentationStateStorage",
    "BreastProjectionXRayImagePresentationStorage": "BreastProjectionXRayImageStorageForPresentation",
    "BreastProjectionXRayImageProcessingStorage": "BreastProjectionXRayImageStorageForProcessing",
    "IntravascularOpticalCoherenceTomographyImagePresentationStorage": "IntravascularOpticalCoherenceTomographyImageStorageForPresentation",
    "IntravascularOpticalCoherenceTomographyImageProcessingStorage": "IntravascularOpticalCoherenceTomographyImageStorageForProcessing",
    "OphthlamicOpticalCoherenceTomographyBScanVolumeAnalysisStorage": "OphthalmicOpticalCoherenceTomographyBscanVolumeAnalysisStorage",
    "MacularGridThicknessAndVolumeReport": "MacularGridThicknessAndVolumeReportStorage",
    "ProcedureSRStorage": "ProcedureLogStorage",
    "KeyObjectSelectionStorage": "KeyObjectSelectionDocumentStorage",
    "ImplantationPlanSRDocumentStorage": "ImplantationPlanSRStorage",
    "RTBrachyApplicationSetupDeliveryInstructionsStorage": "RTBrachyApplicationSetupDeliveryInstructionStorage",
}

# The seed page has two UIDs with a typo; a sender never uses them, but a rule file
# copied from that page might, so they resolve to the real class.
SEED_UID_TYPOS: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.1.1.1.1": "1.2.840.10008.5.1.4.1.1.1.1.1",
    "1.2.840.10008.5.1.1.4.1.1.3.1": "1.2.840.10008.5.1.4.1.1.1.3.1",
}


@cache
def _keywords(kind: str) -> dict[str, str]:
    """Keyword -> UID for 'SOP Class' (incl. pynetdicom's storage names) or 'Transfer Syntax'."""
    table = {v[4]: k for k, v in UID_dictionary.items() if v[1] == kind and v[4]}
    if kind == "SOP Class":
        table.update(_STORAGE_CLASSES)
        for old, new in SEED_ALIASES.items():
            table[old] = table[new]
    return table


def sop_class_names() -> set[str]:
    """Every SOP class keyword a rule file may write (for did-you-mean)."""
    return set(_keywords("SOP Class"))


def _resolve(kind: str, label: str, name: str) -> str:
    table = _keywords(kind)
    if name in table:
        return table[name]
    if name[:1].isdigit():
        if len(name) > 64 or not re.fullmatch(RE_VALID_UID, name):
            raise ValueError(f"{name!r} is not a valid UID")
        return SEED_UID_TYPOS.get(name, name)
    raise UnknownName(label, name, table)


def resolve_sop_class(name: str) -> str:
    """A SOP class keyword (today's, pynetdicom's or the seed's) or any valid UID -> UID."""
    return _resolve("SOP Class", "SOP class", name)


def resolve_transfer_syntax(name: str) -> str:
    """A transfer syntax keyword or UID -> UID."""
    return _resolve("Transfer Syntax", "transfer syntax", name)


def is_storage_class(uid: str) -> bool:
    """True when the libraries know `uid` as a Storage SOP class."""
    return uid in _storage_uids()


@cache
def _storage_uids() -> frozenset[str]:
    return frozenset(_STORAGE_CLASSES.values())


def is_known_uid(uid: str) -> bool:
    """True when the DICOM standard (pydicom's dictionary) defines `uid`."""
    return uid in UID_dictionary


def sop_class_name(uid: str) -> str:
    """Today's keyword for a UID, or the UID itself when unknown."""
    entry = UID_dictionary.get(uid)
    return entry[4] if entry and entry[4] else uid
