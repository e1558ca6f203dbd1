"""Path templates of store destinations (design §4 store, §7): sanitised, never escaping."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest

from router.actions.templates import Template, sanitize, template_fields, template_root
from router.dicom.header import uid_problem

TEMPLATE = "archive/{PatientID}/{StudyInstanceUID}/{SOPInstanceUID}.dcm"


def lookup_from(values: dict[str, str | None]) -> Callable[[str], str | None]:
    """A template lookup answering from `values` (None for anything else)."""
    return lambda keyword: values.get(keyword)


# --- sanitise ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("../", ".._", id="dotdot-slash"),
        pytest.param("/", "_", id="slash"),
        pytest.param("a/b", "a_b", id="inner-slash"),
        pytest.param("\\", "_", id="backslash"),
        pytest.param("..\\..\\x", ".._.._x", id="windows-traversal"),
        pytest.param("a\x00b", "a_b", id="nul"),
        pytest.param("a\nb\tc\x1f\x7f", "a_b_c__", id="control-chars"),
        pytest.param("..", "__", id="dotdot"),
        pytest.param(".", "_", id="dot"),
        pytest.param("...", "___", id="dots"),
        pytest.param("", "UNKNOWN", id="empty"),
        pytest.param(None, "UNKNOWN", id="none"),
        pytest.param("   ", "UNKNOWN", id="spaces"),
        pytest.param("Müller^Jürgen", "Müller^Jürgen", id="unicode-kept"),
        pytest.param("山田^太郎", "山田^太郎", id="cjk-kept"),
        pytest.param("TEST0001", "TEST0001", id="plain"),
    ],
)
def test_sanitize(value: str | None, expected: str) -> None:
    """Hostile tag values become one harmless path component; empty becomes UNKNOWN."""
    assert sanitize(value) == expected


@pytest.mark.parametrize("value", ["x" * 1000, "é" * 1000, "山" * 1000])
def test_sanitize_truncates_long_values_to_valid_utf8(value: str) -> None:
    """A very long value is cut below NAME_MAX without splitting a UTF-8 character."""
    out = sanitize(value)
    assert 0 < len(out.encode("utf-8")) <= 128
    assert value.startswith(out)


# --- target paths --------------------------------------------------------------------

HOSTILE_IDS = [
    "../../../../etc/passwd",
    "/etc/passwd",
    "..",
    ".",
    "",
    "..\\..\\windows",
    "a/../../..",
    "\x00",
    "\x00/../..",
    "~root",
    "$(rm -rf /)",
    "../" * 100,
    "x" * 5000,
    "\n../\r",
    " .. ",
]


@pytest.mark.parametrize("patient_id", HOSTILE_IDS)
def test_target_path_never_leaves_template_root(tmp_path: Path, patient_id: str) -> None:
    """Whatever the PatientID, the target stays below the template's root folder."""
    lookup = lookup_from(
        {"PatientID": patient_id, "StudyInstanceUID": "1.2.3", "SOPInstanceUID": "1.2.3.4"}
    )
    target = Template(tmp_path, TEMPLATE).target(lookup)
    root = (tmp_path / "archive").resolve()
    assert target.is_relative_to(root)
    assert target.relative_to(root).parts[1:] == ("1.2.3", "1.2.3.4.dcm")


@pytest.mark.parametrize("sop_instance_uid", HOSTILE_IDS)
def test_hostile_file_name_stays_one_component(tmp_path: Path, sop_instance_uid: str) -> None:
    """A hostile value in the file-name field still yields exactly one file in its folder."""
    lookup = lookup_from(
        {"PatientID": "P1", "StudyInstanceUID": "1.2.3", "SOPInstanceUID": sop_instance_uid}
    )
    target = Template(tmp_path, TEMPLATE).target(lookup)
    assert target.parent == (tmp_path / "archive" / "P1" / "1.2.3").resolve()


def test_missing_values_become_unknown(tmp_path: Path) -> None:
    """Tags missing from the dataset fill their template field with UNKNOWN."""
    target = Template(tmp_path, TEMPLATE).target(lookup_from({}))
    assert target == (tmp_path / "archive/UNKNOWN/UNKNOWN/UNKNOWN.dcm").resolve()


@pytest.mark.parametrize(
    ("template", "root"),
    [
        ("archive/{PatientID}/{SOPInstanceUID}.dcm", "archive"),
        ("data/archive/x{PatientID}/{SOPInstanceUID}.dcm", "data/archive"),
        ("{PatientID}/{SOPInstanceUID}.dcm", ""),
    ],
)
def test_template_root_is_the_text_before_the_first_field_component(
    template: str, root: str
) -> None:
    """template_root is the folder of the template before any field appears."""
    assert template_root(template) == root


def test_render_fills_fields_with_sanitised_values() -> None:
    """render() substitutes each keyword with its sanitised value."""
    template = Template(Path("."), "a/{PatientID}/{Modality}.dcm")
    rendered = template.render(lookup_from({"PatientID": "../x"}))
    assert rendered == "a/.._x/UNKNOWN.dcm"


def test_template_fields_are_the_keywords_used() -> None:
    """The keywords a template reads, which the header must provide."""
    assert template_fields(TEMPLATE) == ["PatientID", "StudyInstanceUID", "SOPInstanceUID"]


# --- UIDs the router accepts (issue 21 row 11) -------------------------------------------

# Non-conformant but accepted, with every printable ASCII character a UID may hold.
ACCEPTED_UIDS = ["1.2.840.0123.5", "1.2.3.", "1.2.abc.4", "1.2 3.x~!#$%&'()*+,-:;<=>?@[]^_`{|}"]


@pytest.mark.parametrize("uid", ACCEPTED_UIDS)
def test_an_accepted_uid_names_its_file_as_received(tmp_path: Path, uid: str) -> None:
    """A UID the identity check takes is one path component, unchanged, inside the root."""
    assert uid_problem(uid) is None
    lookup = lookup_from({"PatientID": "P1", "StudyInstanceUID": uid, "SOPInstanceUID": uid})
    target = Template(tmp_path, TEMPLATE).target(lookup)
    assert target == (tmp_path / "archive" / "P1" / uid / f"{uid}.dcm").resolve()


# "~root" is a plain name inside a folder (no shell expands it); "" is a missing UID,
# tested over the network.
@pytest.mark.parametrize("uid", [u for u in HOSTILE_IDS if u.strip() and u != "~root"])
def test_the_identity_check_refuses_every_hostile_value_as_a_uid(uid: str) -> None:
    """Traversal, separators, control bytes, leading dots, over 64 characters: refused."""
    assert uid_problem(uid) is not None


def test_every_uid_the_identity_check_takes_is_kept_by_sanitize() -> None:
    """Over 20,000 random printable strings: taken as a UID means one unchanged component."""
    rng = random.Random(21)
    alphabet = "".join(map(chr, range(0x20, 0x7F))) + "..../\\\x00\n"
    taken = 0
    for _ in range(20000):
        uid = "".join(rng.choices(alphabet, k=rng.randint(1, 70)))
        if uid_problem(uid) is None:
            taken += 1
            assert sanitize(uid) == uid and uid not in (".", "..")
    assert taken > 1000
