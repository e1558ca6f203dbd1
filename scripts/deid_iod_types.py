#!/usr/bin/env python3
"""Generate router/dicom/data/deid_iod_types.json: for each SOP class, its IOD, and for each
IOD the Type of the attributes that PS3.15 Table E.1-1 gives a conditional action
(X/Z, X/D, Z/D, X/Z/D, X/Z/U*). Run by hand when the table's edition moves, not in the build.

Sources (both MIT licensed; see router/dicom/data/README.md):
  --standard DIR   innolitics/dicom-standard's standard/ folder at commit 8670abd (rev 2024b):
                   sops.json (SOP Class UID -> IOD) and ciod_to_modules.json (IOD -> modules)
  --modules FILE   highdicom 0.27.0's src/highdicom/_modules.py: module -> attributes, with
                   their path (nesting) and Type
Only top-level attributes of a module (empty path) count: the router looks Types up for the
top-level elements of an instance only. An attribute in several modules of one IOD takes the
strictest (lowest) Type; the conditional Types 1C and 2C count as 1 and 2.

    python scripts/deid_iod_types.py --standard /tmp/dicom-standard/standard \
        --modules /tmp/highdicom/_modules.py > router/dicom/data/deid_iod_types.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

from pydicom.datadict import tag_for_keyword

TABLE = Path(__file__).resolve().parent.parent / "router" / "dicom" / "data" / "deid_table.json"
STANDARD_COMMIT = "8670abdd9ad16c61af5146ef857899699bdd9c5f"


def _load_modules(path: Path) -> dict[str, list[dict[str, Any]]]:
    spec = importlib.util.spec_from_file_location("highdicom_modules", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.MODULE_ATTRIBUTE_MAP  # type: ignore[no-any-return]


def build(standard: Path, modules_file: Path) -> dict[str, Any]:
    """The JSON document: sources, SOP class -> IOD, IOD -> {tag: Type}."""
    table = json.loads(TABLE.read_text(encoding="utf-8"))
    conditional = {row[0] for row in table["rows"] if "/" in row[1]}
    sops = json.loads((standard / "sops.json").read_text(encoding="utf-8"))
    ciod_modules = json.loads((standard / "ciod_to_modules.json").read_text(encoding="utf-8"))
    ciods = {c["name"]: c["id"] for c in json.loads((standard / "ciods.json").read_text())}
    module_attrs = _load_modules(modules_file)

    # module -> {tag: Type digit} for its top-level attributes the table makes conditional
    module_types: dict[str, dict[str, str]] = {}
    for module, attrs in module_attrs.items():
        found: dict[str, str] = {}
        for attr in attrs:
            tag = tag_for_keyword(str(attr["keyword"]))
            if attr["path"] or tag is None or f"{tag:08X}" not in conditional:
                continue
            key = f"{tag:08X}"
            found[key] = min(found.get(key, "3"), str(attr["type"])[0])
        module_types[module] = found

    missing: set[str] = set()
    iods: dict[str, dict[str, str]] = {}
    for entry in ciod_modules:
        if entry["moduleId"] not in module_types:
            missing.add(entry["moduleId"])
            continue
        types = iods.setdefault(entry["ciodId"], {})
        for key, digit in module_types[entry["moduleId"]].items():
            types[key] = min(types.get(key, digit), digit)
    if missing:
        print(f"modules not in highdicom: {sorted(missing)}", file=sys.stderr)

    sop_classes = {}
    for sop in sops:
        iod = ciods.get(sop["ciod"])
        if iod is None or iod not in iods:
            print(f"no IOD for {sop['id']} ({sop['ciod']})", file=sys.stderr)
            continue
        sop_classes[sop["id"]] = iod
    used = set(sop_classes.values())
    return {
        "what": "Type (1 or 2) of each attribute PS3.15 Table E.1-1 gives a conditional"
        " action, at the top level of each IOD; in several modules: the strictest; 1C, 2C"
        " count as 1, 2; Type 3 and attributes not in the IOD are not listed",
        "edition": table["edition"],
        "sources": [
            "innolitics/dicom-standard (https://github.com/innolitics/dicom-standard),"
            f" standard/sops.json, ciods.json and ciod_to_modules.json at commit {STANDARD_COMMIT}"
            " ('Update standard to rev2024b'): SOP Class UID -> IOD -> modules",
            "highdicom 0.27.0 (https://github.com/ImagingDataCommons/highdicom),"
            " src/highdicom/_modules.py (generated 2024-10-04 from the same project's"
            " module_to_attributes.json): the attributes of each module with their Type",
        ],
        "license": "MIT: Copyright (c) 2017 Innolitics, LLC; Copyright 2020 MGH Computational"
        " Pathology (highdicom); the DICOM Standard text is Copyright NEMA, freely usable",
        "generated_by": "scripts/deid_iod_types.py",
        "sop_classes": dict(sorted(sop_classes.items())),
        # Type 3 (and not in the IOD) resolve alike, to the form removing most: not listed
        "iods": {
            iod: {tag: t for tag, t in sorted(iods[iod].items()) if t != "3"}
            for iod in sorted(used)
        },
    }


def main() -> None:
    """Print the JSON document on stdout."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--standard", type=Path, required=True)
    parser.add_argument("--modules", type=Path, required=True)
    args = parser.parse_args()
    doc = build(args.standard, args.modules)
    # one SOP class, one IOD a line: small, and a new edition diffs line by line
    lines = [json.dumps({k: v for k, v in doc.items() if k not in ("sop_classes", "iods")})]
    lines[0] = lines[0][:-1] + ',\n"sop_classes": {'
    for name in ("sop_classes", "iods"):
        items = [f"{json.dumps(k)}: {json.dumps(v)}" for k, v in doc[name].items()]
        lines.append(",\n".join(items))
        lines.append("},\n" + '"iods": {' if name == "sop_classes" else "}}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
