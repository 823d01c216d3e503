"""OTLP JSON of the annotated spans, with their events and links: one `{"resourceSpans":
[...]}` document (the OTLP/HTTP JSON encoding: hex ids, enums as numbers, 64-bit integers as
strings). Jaeger's UI opens it ("Search" -> "JSON File"), and any OTLP/HTTP receiver takes
it as it is:
`curl -H 'Content-Type: application/json' --data @otlp.json http://HOST:4318/v1/traces`."""

from .model import OTLP_KINDS, OTLP_STATUS


def any_value(v):
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v)}
    if isinstance(v, float):
        return {"doubleValue": v}
    if isinstance(v, (list, tuple)):
        return {"arrayValue": {"values": [any_value(x) for x in v]}}
    if isinstance(v, dict):
        return {"kvlistValue": {"values": attributes(v)}}
    return {"stringValue": "" if v is None else str(v)}


def attributes(d):
    return [{"key": k, "value": any_value(v)} for k, v in d.items()]


def _enum(name, names):
    return names.index(name) if name in names else 0


def otlp_span(s):
    out = {
        "traceId": s["trace_id"],
        "spanId": s["span_id"],
        "name": s["name"],
        "kind": _enum(s["kind"], OTLP_KINDS),
        "startTimeUnixNano": str(s["start_ns"]),
        "endTimeUnixNano": str(s["end_ns"]),
        "attributes": attributes(s["attributes"]),
        "status": {"code": _enum(s["status"]["code"], OTLP_STATUS)},
    }
    if s["parent_span_id"]:
        out["parentSpanId"] = s["parent_span_id"]
    if s["status"].get("message"):
        out["status"]["message"] = s["status"]["message"]
    if s.get("events"):
        out["events"] = [{"name": e["name"], "timeUnixNano": str(e["time_ns"]),
                          "attributes": attributes(e.get("attributes", {}))} for e in s["events"]]
    if s.get("links"):
        out["links"] = [otlp_link(l) for l in s["links"]]
    return out


def otlp_link(l):
    """A flat link as OTLP JSON; `flags` only when the link says whether it is sampled or
    remote (bit 0 sampled, bit 8 "remote is known", bit 9 remote)."""
    out = {"traceId": l["trace_id"], "spanId": l["span_id"],
           "attributes": attributes(l.get("attributes", {}))}
    if "sampled" in l or "remote" in l:
        out["flags"] = ((0x1 if l.get("sampled") else 0)
                        | (0x100 | (0x200 if l["remote"] else 0) if "remote" in l else 0))
    return out


def otlp_document(spans):
    """One OTLP JSON document of flat spans (model.load), grouped by resource and scope, in
    time order."""
    groups = {}  # resource key -> (resource, {scope: [spans]})
    for s in sorted(spans, key=lambda s: (s["start_ns"], s["trace_id"], s["span_id"])):
        resource = s.get("resource") or {"service.name": s["service"]}
        key = repr(sorted(resource.items()))
        _, scopes = groups.setdefault(key, (resource, {}))
        scopes.setdefault(s.get("scope", ""), []).append(otlp_span(s))
    return {"resourceSpans": [
        {"resource": {"attributes": attributes(resource)},
         "scopeSpans": [{"scope": {"name": scope}, "spans": ss} for scope, ss in scopes.items()]}
        for resource, scopes in groups.values()]}
