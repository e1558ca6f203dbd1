"""DICOM constants and small types shared by the walk, the header, modify and transcode.

Tags are ints, (gggg,eeee) as gggg << 16 | eeee; VRs as the two bytes of an explicit
element header. Transfer syntax UIDs are pydicom's (`pydicom.uid`).
"""

from __future__ import annotations

from pydicom.valuerep import EXPLICIT_VR_LENGTH_16, EXPLICIT_VR_LENGTH_32

TagValues = tuple[str, ...]
"""A tag's value as text, one item per value (VM > 1 gives several); () when empty."""

TRANSFER_SYNTAX_UID = 0x00020010
SPECIFIC_CHARACTER_SET = 0x00080005
PIXEL_DATA = 0x7FE00010

# PS3.5 7.5: items, their delimiters, and the length that means "until the delimiter".
ITEM = 0xFFFEE000
ITEM_END = 0xFFFEE00D  # Item Delimitation Item
SEQUENCE_END = 0xFFFEE0DD  # Sequence Delimitation Item (also ends encapsulated fragments)
UNDEFINED_LENGTH = 0xFFFFFFFF

# PS3.5 7.1.2: explicit VRs whose length takes 4 bytes after 2 reserved ones, and those
# whose length takes 2 bytes; as bytes, to test an element header without decoding it.
LONG_VRS = frozenset(vr.encode("ascii") for vr in EXPLICIT_VR_LENGTH_32)
SHORT_VRS = frozenset(vr.encode("ascii") for vr in EXPLICIT_VR_LENGTH_16)


def tag_text(tag: int) -> str:
    """A tag as messages write it: (GGGG,EEEE)."""
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
