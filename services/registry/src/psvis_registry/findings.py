"""Compliance findings of the registry, evaluated at a date from read models alone (AUD-4).

Each area judges in its own module: one system's own duties in findings_systems, mandatory
sites in findings_sites, construction projects in findings_projects; what they share in
findings_common."""

from __future__ import annotations

from datetime import date

from psvis.readstore.port import Document
from psvis.registry.v1 import registry_pb2 as reg
from psvis.rulepack import RulePack

from psvis_registry.findings_projects import project_findings
from psvis_registry.findings_sites import site_findings
from psvis_registry.findings_systems import system_findings
from psvis_registry.projections import view_of


def all_findings(
    systems: list[Document],
    sites: list[Document],
    projects: list[Document],
    pack: RulePack,
    as_of: date,
) -> list[reg.Finding]:
    parsed = [(doc, view_of(doc)) for doc in systems]
    found = [f for doc, view in parsed for f in system_findings(doc, view, pack, as_of)]
    found += site_findings(sites, parsed, pack, as_of)
    found += project_findings(parsed, projects, pack, as_of)
    return sorted(found, key=lambda f: (f.spec, f.subject, f.rule, f.since, f.detail))
