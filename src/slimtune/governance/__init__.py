"""Data governance and security: dataset manifests and licences, contamination and leakage, PII, poisoning
signals, adapter weight scans, adapter cards, a hash-chained audit log, and the policy that gates training.
"""

from slimtune.governance.adapter_scan import AdapterScanReport, scan_adapter, scan_state_dict
from slimtune.governance.audit import AuditLog, VerifyResult
from slimtune.governance.card import render_card, write_card
from slimtune.governance.contamination import (
    ContaminationConfig,
    ContaminationReport,
    EvalContamination,
    scan_contamination,
    split_overlap,
)
from slimtune.governance.licences import LicenceVerdict, check_licence
from slimtune.governance.manifest import FileManifest, build_manifest, detect_licence
from slimtune.governance.pii import PiiReport, find_pii, redact_text, scan_pii
from slimtune.governance.poisoning import PoisoningConfig, PoisoningReport, loss_outliers, scan_poisoning
from slimtune.governance.policy import Decision, Policy, check, enforce, load_policy
from slimtune.governance.reader import iter_rows, row_text
from slimtune.governance.scan import ScanReport, gate, scan_dataset
from slimtune.governance.transforms import decontaminate, redact_file

__all__ = [
    "AdapterScanReport", "AuditLog", "ContaminationConfig", "ContaminationReport", "Decision",
    "EvalContamination", "FileManifest", "LicenceVerdict", "PiiReport", "PoisoningConfig", "PoisoningReport",
    "Policy", "ScanReport", "VerifyResult", "build_manifest", "check", "check_licence", "decontaminate",
    "detect_licence", "enforce", "find_pii", "gate", "iter_rows", "load_policy", "loss_outliers", "redact_file",
    "redact_text", "render_card", "row_text", "scan_adapter", "scan_contamination", "scan_dataset",
    "scan_pii", "scan_poisoning", "scan_state_dict", "split_overlap", "write_card",
]
