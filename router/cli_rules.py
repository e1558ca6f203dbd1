"""The commands that read a rule file without running it: check, explain, schema.

`router.cli` parses the command line and turns errors into exit codes; these return one.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from dataclasses import replace
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError

from router.actions.modify import apply_in_memory
from router.actions.pipeline import Pipeline, Received
from router.actions.plan import action_names, collection_notes
from router.config.actions import Action, DeidentifyAction, ModifyAction
from router.config.destinations import FilesystemDestination
from router.config.model import Config
from router.dicom.deid import Context, deidentify, may_have_burned_in
from router.dicom.deid_diff import changes
from router.dicom.deid_iod import iod_types
from router.dicom.deid_table import table
from router.dicom.header import tag_values
from router.dicom.sopclass import sop_class_name
from router.dicom.status import hex_code
from router.errors import ActionError, UsageError
from router.rules.engine import also_matching, wanted_tags
from router.rules.fixtures import describe
from router.rules.ruleset import LoadedConfig, load

EXIT_OK, EXIT_INVALID = 0, 1


def check(args: argparse.Namespace) -> int:
    """`check FILE [--strict]`: validate, summarise, warn and run the fixtures."""
    if not args.file.exists():
        raise UsageError(f"{args.file}: no such rule file")
    loaded = load(args.file)
    cfg = loaded.config
    print(f"{args.file}: syntax ok, config version {loaded.version}")
    _print_summary(cfg, loaded)
    for warning in loaded.warnings:
        print(f"warning: {warning}")
    for result in loaded.fixtures:
        mark = "ok  " if result.passed else "FAIL"
        shown = ", ".join(
            f"{k}={describe(v, k)}"
            + ("" if result.got.get(k) == v else f" (got {describe(result.got.get(k), k)})")
            for k, v in result.expected.items()
        )
        print(f"  fixture {mark} {result.name}: {shown}")
    for failure in loaded.fixture_failures:
        print(failure, file=sys.stderr)
    if loaded.fixture_failures or (args.strict and loaded.warnings):
        return EXIT_INVALID
    return EXIT_OK


def _print_summary(cfg: Config, loaded: LoadedConfig) -> None:
    listen = cfg.listen
    print(
        f"  listen    {listen.ae_title} on {listen.host}:{listen.port}"
        f"{' (TLS)' if listen.tls else ''}, spool {loaded.spool}"
    )
    if cfg.callers is None:
        print("  callers   any calling AE title, from any address")
    for caller in cfg.callers or ():
        hosts = ", ".join(str(h) for h in caller.hosts) if caller.hosts else "any address"
        commits = (
            f", storage commitment reports to port {caller.commitment_port}"
            if caller.commitment_port and cfg.storage_commitment
            else ""
        )
        print(f"  callers   {caller.ae_title} from {hosts}{commits}")
    if cfg.metrics:
        host = f"[{cfg.metrics.host}]" if ":" in cfg.metrics.host else cfg.metrics.host
        where = f"http://{host}:{cfg.metrics.port}"
        print(f"  metrics   {where}/metrics (and /healthz, /readyz)")
    # Here, not at the top: the registry brings every sending library (httpx...), which the
    # daemon's main process, importing this module, does not need.
    from router.destinations import registry

    for name, dest in cfg.destinations.items():
        kind = registry.kind_of(dest)
        if kind is not None:
            print(f"  dest      {name}: {kind.describe(dest)}")
        elif isinstance(dest, FilesystemDestination):
            print(f"  dest      {name}: folder {loaded.resolve(dest.path)}")
    for i, rule in enumerate(cfg.rules, 1):
        print(
            f"  rule {i:<4} {rule.name}: "
            f"{', '.join(rule.match.model_dump(exclude_none=True, by_alias=True)) or 'always'}"
            f" -> {', '.join(action_names(rule.actions))}"
        )
    print(f"  default   -> {', '.join(action_names(cfg.default))}")
    t, iods = table(), iod_types()
    for name, profile in cfg.deidentify.items():
        key = f"key_file {profile.key_file}" if profile.key_file else "key_credential"
        print(
            f"  deid      {name}: PS3.15 {t.edition} Basic Profile (Table E.1-1, {t.rows} rows;"
            f" IOD Types {iods.edition}, {len(iods.sop_classes)} SOP classes),"
            f" options {', '.join(profile.options) or 'none'}, burned_in {profile.burned_in},"
            f" {key}"
        )


def explain(args: argparse.Namespace) -> int:
    """`explain FILE DICOM_FILE...`: a dry run of each file through the rules."""
    if not args.file.exists():
        raise UsageError(f"{args.file}: no such rule file")
    loaded = load(args.file)
    pipeline = Pipeline(lambda: loaded, None, loaded.spool / "work")
    worst = EXIT_OK
    for path in args.dicom_files:
        try:
            meta = _read_header(path)
        except UsageError as exc:
            print(f"{path}: {exc}", file=sys.stderr)
            worst = EXIT_INVALID
            continue
        received = Received(
            path=path,
            sop_class_uid=str(
                meta.file_meta.get("MediaStorageSOPClassUID", meta.get("SOPClassUID", ""))
            ),
            sop_instance_uid=str(meta.get("SOPInstanceUID", "")),
            calling_ae=args.calling_ae,
            called_ae=args.called_ae or loaded.config.listen.ae_title,
            peer=args.peer,
            transfer_syntax=str(meta.file_meta.get("TransferSyntaxUID", "")),
        )
        print(f"{path}: {sop_class_name(received.sop_class_uid)} {received.sop_instance_uid}")
        try:
            decision, header = pipeline.evaluate(loaded, received)
        except ActionError as exc:
            print(f"  status  {hex_code(exc.status)} ({exc})")
            continue
        print(f"  rule    {decision.rule}")
        for reason in decision.reasons:
            print(f"  why     {reason}")
        tags = tag_values(header, wanted_tags(loaded.config))
        shadowed = also_matching(loaded.config, decision.rule, replace(received.facts(), tags=tags))
        if shadowed:
            print(f"  shadows {', '.join(shadowed)} (would also match; the first match wins)")
        print(f"  actions {', '.join(action_names(decision.actions))}")
        for note in collection_notes(decision.actions, loaded.config.studies):
            print(f"  collect {note}")
        print(f"  status  {hex_code(decision.status)}")
        if any(isinstance(a, DeidentifyAction) for a in decision.actions):
            _print_deidentified(loaded, decision.actions, path)
    return worst


def _print_deidentified(loaded: LoadedConfig, actions: tuple[Action, ...], path: Path) -> None:
    """Each attribute a deidentify action changes, before -> after, run on a copy in memory."""
    ds = dcmread(path, stop_before_pixels=True)  # Pixel Data is never changed
    for action in actions:
        if isinstance(action, ModifyAction):
            apply_in_memory(ds, action.modify)  # what the deidentify after it gets
        if not isinstance(action, DeidentifyAction):
            continue
        name = action.deidentify
        profile = loaded.config.deidentify[name]
        if profile.burned_in == "refuse" and may_have_burned_in(ds):
            print(f"  deid    {name}: withheld (has or may have burned-in annotation)")
            return  # the actions after it do not get the instance
        after = copy.deepcopy(ds)
        deidentify(after, Context.of(profile.transform(name), ds))
        found = changes(ds, after)
        print(f"  deid    {name}: {len(found)} attribute(s) changed")
        for change in found:
            print(f"    {change.line()}")
        ds = after


def _read_header(path: Path) -> Dataset:
    """A DICOM file's header; UsageError saying in one line why it cannot be read."""
    try:
        return dcmread(path, stop_before_pixels=True)
    except OSError as exc:
        raise UsageError(f"cannot read: {exc.strerror or exc}") from None
    except InvalidDicomError:
        raise UsageError("not a DICOM file (no 'DICM' after the 128-byte preamble)") from None
    except Exception as exc:
        raise UsageError(f"not a readable DICOM file ({type(exc).__name__}: {exc})") from None


def schema(_args: argparse.Namespace) -> int:
    """`schema`: the rule file's JSON Schema on stdout."""
    print(json.dumps(Config.model_json_schema(by_alias=True), indent=2))
    return EXIT_OK
