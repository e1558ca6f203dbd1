"""The fuzz suite's own parts (tests/fuzz/): its structural oracle and its replayable cases.

No daemon here: these check that the judge of "structurally invalid" is right on known
inputs, so that the campaign's verdicts in test_fuzz.py can be trusted.
"""

from __future__ import annotations

import random
import struct
import subprocess
import zlib
from pathlib import Path

from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_file_meta_info

from tests.fuzz.cases import Case, make_case
from tests.fuzz.datasets import (
    BOMB_BYTES,
    Base,
    base_index,
    bases,
    deflate,
    deflate_bomb,
    explicit_bases,
    m_deep_nesting,
)
from tests.fuzz.oracle import DEFLATED_LE, EXPLICIT_LE, IMPLICIT_LE, invalid_reason
from tests.fuzz.pdus import RQ_MUTATIONS


def ct() -> Base:
    """The generated CT base, Explicit VR Little Endian."""
    return bases()[0]


def with_undefined_sequence() -> Base:
    """The base with undefined-length sequences and items."""
    (base,) = [b for b in bases() if b.name == "undefined-length-sq"]
    return base


def test_every_base_is_valid() -> None:
    """The unmutated datasets the fuzzer starts from pass the oracle, in every syntax."""
    assert {invalid_reason(b.body, b.transfer_syntax) for b in bases()} == {None}
    assert {b.transfer_syntax for b in bases()} == {EXPLICIT_LE, IMPLICIT_LE}


def test_pydicom_reads_a_truncated_dataset_without_error_the_oracle_does_not() -> None:
    """Why the oracle exists: pydicom silently shortens a dataset cut inside a value."""
    cut = ct().body[:-3]
    fp = DicomBytesIO(cut)
    fp.is_little_endian, fp.is_implicit_VR = True, False
    ds = read_dataset(fp, is_implicit_VR=False, is_little_endian=True)
    assert len(ds.PixelData) == len(ct().body) - base_index(ct())[-1].end - 3
    assert invalid_reason(cut, EXPLICIT_LE) == "value-overruns-container"


def test_a_dataset_cut_inside_an_element_header_is_invalid() -> None:
    """Five bytes of the last element's header are not an element."""
    last = base_index(ct())[-1]
    assert invalid_reason(ct().body[: last.pos + 5], EXPLICIT_LE) == "truncated-header"


def test_tags_out_of_order_are_invalid() -> None:
    """PS3.5 §7.1: ascending tags; an element appended after Pixel Data is out of order."""
    extra = struct.pack("<HH2sH", 0x0010, 0x0010, b"PN", 2) + b"AB"
    assert invalid_reason(ct().body + extra, EXPLICIT_LE) == "tag-out-of-order"


def test_undefined_length_on_a_non_sequence_is_invalid() -> None:
    """Undefined length on OB Pixel Data of a native transfer syntax is not a sequence."""
    last = base_index(ct())[-1]
    body = ct().body[: last.length_at] + b"\xff" * 4 + ct().body[last.end :]
    assert invalid_reason(body, EXPLICIT_LE) == "undefined-length-not-sq"


def test_a_missing_sequence_delimiter_is_invalid() -> None:
    """An undefined-length sequence without its (FFFE,E0DD) swallows the next element."""
    base = with_undefined_sequence()
    (end,) = [e for e in base_index(base) if e.tag == 0xFFFEE0DD]
    body = base.body[: end.pos] + base.body[end.end :]
    assert invalid_reason(base.body, EXPLICIT_LE) is None
    assert invalid_reason(body, EXPLICIT_LE) is not None


def test_an_unknown_explicit_vr_is_invalid() -> None:
    """Two bytes that are no VR in an explicit-VR element header."""
    first = base_index(ct())[0]
    body = ct().body[: first.pos + 4] + b"XX" + ct().body[first.pos + 6 :]
    assert invalid_reason(body, EXPLICIT_LE) == "unknown-vr"


def test_a_flipped_bit_inside_a_value_keeps_the_dataset_valid() -> None:
    """The oracle judges structure, not values: a changed letter in a name is valid."""
    at = ct().body.index(b"Test^Patient")
    body = ct().body[:at] + b"U" + ct().body[at + 1 :]
    assert invalid_reason(body, EXPLICIT_LE) is None


def test_deep_nesting_is_valid_and_unclosed_deep_nesting_is_not() -> None:
    """Thousands of nested sequences are valid (walked without recursion) when closed."""
    rng = random.Random(3)
    body = m_deep_nesting(rng, ct().body, base_index(ct()), False)
    assert len(body) > len(ct().body) + 64 * 24
    assert invalid_reason(body, EXPLICIT_LE) is None
    assert invalid_reason(body[:-8], EXPLICIT_LE) is not None


def test_deflated_datasets_must_inflate_completely() -> None:
    """A deflated dataset is judged after inflating; a cut stream or trailing bytes are not."""
    packed = deflate(ct().body)
    assert invalid_reason(packed, DEFLATED_LE) is None
    assert invalid_reason(packed[:-5], DEFLATED_LE) == "inflate-truncated"
    assert invalid_reason(packed + b"\0\0", DEFLATED_LE) == "inflate-trailing-bytes"


def test_the_deflate_bomb_is_small_valid_and_huge_inflated() -> None:
    """128 MiB of padding deflates to well under 1 MiB and is a valid dataset."""
    bomb = deflate_bomb(explicit_bases()[0].body)
    assert len(bomb) < 1024 * 1024
    inflated = zlib.decompress(bomb, -zlib.MAX_WBITS)
    assert len(inflated) > BOMB_BYTES
    assert invalid_reason(bomb, DEFLATED_LE) is None


def test_a_case_is_the_same_every_time_it_is_made_from_its_name() -> None:
    """Replaying `dataset:S:N` or `pdu:S:N` rebuilds exactly the bytes the campaign sent."""
    for name in ("dataset:7:1", "dataset:7:2", "dataset:99:123"):
        first, again = make_case(name), make_case(name)
        assert (first.kind, first.data, first.uid) == (again.kind, again.data, again.uid)
    rq = [make_case(f"pdu:7:{n}") for n in range(40)]
    rq = [case for case in rq if case.family == "rq"]
    assert rq
    for case in rq:
        again = make_case(case.name)
        assert RQ_MUTATIONS[case.kind](case.rng) == RQ_MUTATIONS[again.kind](again.rng)


def part10(case: Case, path: Path) -> Path:
    """A case's dataset behind a valid preamble and file meta, for DCMTK to read."""
    assert case.base is not None
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = case.base.sop_class
    meta.MediaStorageSOPInstanceUID = case.uid
    meta.TransferSyntaxUID = case.transfer_syntax
    with path.open("wb") as fp:
        fp.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(fp, meta, enforce_standard=True)
        fp.write(case.data)
    return path


def test_every_dataset_dcmtk_finds_damaged_the_oracle_calls_invalid(tmp_path: Path) -> None:
    """On 150 fuzz datasets, DCMTK's dcmdump never fails one that the oracle calls valid.

    The oracle is stricter than dcmdump (which tolerates unknown VRs, tags out of order
    and some overrunning items), never laxer.
    """
    damaged_by_dcmtk, invalid = 0, 0
    for n in range(150):
        case = make_case(f"dataset:5:{n}")
        if case.kind == "deflate-bomb":
            continue
        dump = subprocess.run(["dcmdump", "-q", str(part10(case, tmp_path / f"{n}.dcm"))],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
        invalid += case.invalid is not None
        if dump.returncode != 0:
            damaged_by_dcmtk += 1
            assert case.invalid is not None, (case.name, case.kind, dump.stderr[:300])
    assert damaged_by_dcmtk > 50 and invalid > damaged_by_dcmtk
