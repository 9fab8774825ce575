"""Trust: harmonization across sites, confound tests, the bias audit and the run's trust checks.

:class:`ComBat` and :class:`VolumeComBat` harmonize features and voxels inside training folds;
:func:`association_tests` tests the label against site, sex and age; :func:`subgroup_audit`
gives per-group performance; :func:`trust_metrics` runs all of them for a trained run.
"""

from neuroml.trust.audit import age_bands, audit_groups, subgroup_audit
from neuroml.trust.checks import (
    HARMONIZERS,
    confound_check,
    demographics,
    site_column_of,
    trust_metrics,
)
from neuroml.trust.confounds import association_tests, cramers_v, is_missing, site_probe
from neuroml.trust.harmonize import ComBat, InputHarmonization, VolumeComBat

__all__ = [
    "HARMONIZERS",
    "ComBat",
    "VolumeComBat",
    "InputHarmonization",
    "association_tests",
    "cramers_v",
    "is_missing",
    "site_probe",
    "age_bands",
    "audit_groups",
    "subgroup_audit",
    "confound_check",
    "demographics",
    "site_column_of",
    "trust_metrics",
]
