"""`deidentify:` named profiles: the PS3.15 Basic Profile, its options and the key.

The key is read when the rule file loads, so `check` refuses a missing, short or
world-readable key with FILE:LINE:COL, and every process that loads the file holds the
same key (the same mapping everywhere). It never appears in the schema, a log or `check`.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from router.config.base import Strict
from router.dicom.deid import Profile
from router.dicom.deid_table import EXCLUSIVE, OPTIONS, REFUSED

MIN_KEY_BYTES = 32

Option = Literal[OPTIONS]  # type: ignore[valid-type]


class DeidProfile(Strict):
    """One de-identification profile, used by `deidentify: NAME` actions."""

    profile: Literal["basic"] = Field(
        "basic",
        description="basic: the PS3.15 Annex E Basic Application Level Confidentiality Profile"
        " (Table E.1-1 of the edition the router ships)",
    )
    options: list[Option] = Field(
        default_factory=list,
        description="PS3.15 options: retain_uids, retain_longitudinal_full_dates, "
        "retain_longitudinal_modified_dates, retain_patient_characteristics, "
        "retain_device_identity, retain_institution_identity, clean_descriptors "
        "(the others are refused with the reason)",
    )
    key_file: str | None = Field(
        None,
        description="absolute path of the secret key (at least 32 bytes, not readable by "
        "others) the replacement UIDs, pseudonyms and date shifts derive from",
    )
    key_credential: str | None = Field(
        None,
        description="instead of key_file: the name of a systemd credential "
        "(LoadCredential=), read from $CREDENTIALS_DIRECTORY",
    )
    burned_in: Literal["refuse", "allow"] = Field(
        "refuse",
        description="refuse: an image with Burned In Annotation YES, or without it on a "
        "SOP class that usually has burned-in text (US, SC, XA, RF, encapsulated documents, "
        "video), is withheld from the actions after deidentify; allow: sent",
    )
    _key: bytes = PrivateAttr(b"")
    _transforms: dict[str, Profile] = PrivateAttr(default_factory=dict)

    @field_validator("options")
    @classmethod
    def _options(cls, options: list[str]) -> list[str]:
        for option in options:
            if option in REFUSED:
                raise ValueError(f"option {option} is not supported: {REFUSED[option]}")
        if all(o in options for o in EXCLUSIVE):
            raise ValueError(f"{' and '.join(EXCLUSIVE)} exclude each other")
        return list(dict.fromkeys(options))

    @model_validator(mode="after")
    def _read_key(self) -> DeidProfile:
        if (self.key_file is None) == (self.key_credential is None):
            raise ValueError("give the key as exactly one of key_file or key_credential")
        if self.key_file is not None:
            path = Path(self.key_file)
            if not path.is_absolute():
                raise ValueError(f"key_file {self.key_file!r} must be an absolute path")
        else:
            folder = os.environ.get("CREDENTIALS_DIRECTORY")
            if not folder:
                raise ValueError(
                    f"key_credential {self.key_credential!r}: $CREDENTIALS_DIRECTORY is not set"
                    " (LoadCredential= in the unit)"
                )
            path = Path(folder) / str(self.key_credential)
        self._key = _read_key(path)
        return self

    def transform(self, name: str) -> Profile:
        """The pure transform's view of this profile (with its key): one per name, so its
        UID and date caches serve every instance the loaded rule file de-identifies."""
        found = self._transforms.get(name)
        if found is None:
            found = self._transforms[name] = Profile(self._key, frozenset(self.options), name)
        return found


def _read_key(path: Path) -> bytes:
    try:
        with path.open("rb") as fp:
            if stat.S_IMODE(os.fstat(fp.fileno()).st_mode) & stat.S_IROTH:
                raise ValueError(f"key {path} is readable by others: chmod o-r (0600 or 0640)")
            key = fp.read(4096)
    except OSError as exc:
        raise ValueError(f"cannot read the key {path}: {exc.strerror}") from None
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(
            f"key {path} has {len(key)} bytes: at least {MIN_KEY_BYTES} are needed"
            " (e.g. head -c 32 /dev/urandom > FILE)"
        )
    return key
