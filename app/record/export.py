"""The consolidated record as a FHIR R4 Bundle (type collection) with one Provenance per organisation.

Every resource keeps its own id and carries its organisation's absolute URL as ``fullUrl``, so nothing
collides; each Provenance names the organisation (ODS code) as custodian of what it supplied. The export
holds exactly what the user may see: the resources behind the record's rows (withheld items never enter
them), plus each organisation's Patient.
"""

from __future__ import annotations

import time
import uuid

from core.identifiers import ODS_SYSTEM

from .service import ConsolidatedRecord


def export_bundle(record: ConsolidatedRecord, viewer_base: str) -> dict:
    entries: list[dict] = []
    seen: set[str] = set()
    shown: dict[str, list[dict]] = {}
    for rows in record.sections.values():
        for row in rows:
            for source, resource in zip(row.sources, row.resources, strict=True):
                shown.setdefault(source.source_id, []).append(resource)
    for result in record.loaded:
        base = result.source.base_url
        supplied = [result.patient, *shown.get(result.source.id, [])]
        targets = []
        for resource in supplied:
            full_url = f"{base}/{resource['resourceType']}/{resource['id']}"
            if full_url in seen:
                continue
            seen.add(full_url)
            entries.append({"fullUrl": full_url, "resource": resource})
            targets.append({"reference": full_url})
        if not targets:
            continue
        provenance_id = str(uuid.uuid4())
        org = {"display": result.source.name}
        if result.source.ods_code:
            org["identifier"] = {"system": ODS_SYSTEM, "value": result.source.ods_code}
        entries.append(
            {
                "fullUrl": f"urn:uuid:{provenance_id}",
                "resource": {
                    "resourceType": "Provenance",
                    "id": provenance_id,
                    "target": targets,
                    "recorded": result.fetched_at or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "policy": [f"{viewer_base}/docs/record-rules"],
                    "agent": [
                        {
                            "type": {
                                "coding": [
                                    {
                                        "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                                        "code": "custodian",
                                        "display": "Custodian",
                                    }
                                ]
                            },
                            "who": org,
                        }
                    ],
                    "entity": [{"role": "source", "what": {"display": f"{result.source.name} FHIR server {base}"}}],
                },
            }
        )
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"lastUpdated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
        "type": "collection",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "entry": entries,
    }
