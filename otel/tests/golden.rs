//! The golden records and spans of `tests/golden/` (README: "What a slow span carries"): the
//! Rust integration decodes the same bytes as the Python one
//! (`preload/python/tests/test_golden.py`) and must export exactly the same attributes, child
//! spans, statuses and times. Also: the layout constants in `records.json` are uapi's and
//! the module's (the Python test checks its own against the same file), and `spanhook.h`
//! agrees.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState};
use opentelemetry::{InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use serde_json::{json, Value as Json};
use spantrack_otel::annotate::{annotate_with, mark, missing, summarise, BadRecord, Record};
use spantrack_logic::record::RECORD_MAX_SIZE;
use spantrack_uapi as uapi;

fn golden(name: &str) -> Json {
    let path = format!("{}/../tests/golden/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn u(v: &Json) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a u64: {v}"))
}

fn time(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

fn ns(t: SystemTime) -> u64 {
    u64::try_from(t.duration_since(UNIX_EPOCH).unwrap().as_nanos()).unwrap()
}

/// An attribute value as JSON, its type kept (`true` and `1` are different exports).
fn json_value(v: &Value) -> Json {
    match v {
        Value::Bool(b) => json!(b),
        Value::I64(i) => json!(i),
        Value::F64(f) => json!(f),
        Value::String(s) => json!(s.as_str()),
        other => panic!("unexpected attribute value {other:?}"),
    }
}

fn attrs(kvs: &[KeyValue]) -> BTreeMap<String, Json> {
    let mut m = BTreeMap::new();
    for kv in kvs {
        let dup = m.insert(kv.key.as_str().to_string(), json_value(&kv.value));
        assert!(dup.is_none(), "attribute {} set twice", kv.key);
    }
    m
}

fn expected_attrs(v: &Json) -> BTreeMap<String, Json> {
    v.as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn status(s: &Status) -> Json {
    match s {
        Status::Unset => json!({"code": "unset"}),
        Status::Ok => json!({"code": "ok"}),
        Status::Error { description } => json!({"code": "error", "description": description.as_ref()}),
    }
}

fn span(s: &Json) -> SpanData {
    let id = |k: &str| hex(s[k].as_str().unwrap());
    let attributes = s["attributes"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| KeyValue::new(k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    SpanData {
        span_context: SpanContext::new(
            TraceId::from_bytes(id("trace_id").try_into().unwrap()),
            SpanId::from_bytes(id("span_id").try_into().unwrap()),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        parent_span_id: SpanId::from_bytes(id("parent_span_id").try_into().unwrap()),
        parent_span_is_remote: true,
        span_kind: SpanKind::Server,
        name: s["name"].as_str().unwrap().to_string().into(),
        start_time: time(u(&s["start_ns"])),
        end_time: time(u(&s["end_ns"])),
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: Status::Unset,
        instrumentation_scope: InstrumentationScope::builder("golden").build(),
    }
}

#[test]
fn layout_constants_are_uapis() {
    let doc = golden("records.json");
    let lay = &doc["layout"];
    assert_eq!(
        u(&lay["abi_version"]),
        u64::from(uapi::ABI_VERSION),
        "records.json is of another ABI version: after a bump, rerun python3 tests/golden/make_records.py and review the diff"
    );
    assert_eq!(u(&lay["record_magic"]), u64::from(uapi::RECORD_MAGIC));
    assert_eq!(u(&lay["record_header_size"]) as usize, uapi::RECORD_HEADER_SIZE);
    assert_eq!(u(&lay["syscall_entry_size"]) as usize, uapi::SYSCALL_ENTRY_SIZE);
    assert_eq!(u(&lay["record_max_size"]) as usize, RECORD_MAX_SIZE);
    assert_eq!(u(&lay["max_span_threads"]) as usize, uapi::MAX_SPAN_THREADS);
    let f = &lay["flags"];
    for (k, v) in [
        ("calls_truncated", uapi::REC_CALLS_TRUNCATED),
        ("pool_exhausted", uapi::REC_POOL_EXHAUSTED),
        ("ended_elsewhere", uapi::REC_ENDED_ELSEWHERE),
        ("many_threads", uapi::REC_MANY_THREADS),
        ("activation", uapi::REC_ACTIVATION),
    ] {
        assert_eq!(u(&f[k]), u64::from(v), "{k}");
    }
    assert_eq!(spantrack_otel::hook::RECORD_MAX, RECORD_MAX_SIZE);
    // The library's C header: `#define SPANHOOK_RECORD_MAX (256u * 1024u)`.
    let path = format!("{}/../preload/include/spanhook.h", env!("CARGO_MANIFEST_DIR"));
    let h = std::fs::read_to_string(&path).unwrap();
    let def = "#define SPANHOOK_RECORD_MAX";
    let line = h.lines().find(|l| l.starts_with(def)).expect("SPANHOOK_RECORD_MAX");
    let value: usize = line[def.len()..]
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().unwrap())
        .product();
    assert_eq!(value, RECORD_MAX_SIZE, "{line}");
}

#[test]
fn records_decode_to_their_fields() {
    let doc = golden("records.json");
    for (name, g) in doc["records"].as_object().unwrap() {
        let raw = hex(g["hex"].as_str().unwrap());
        let rec = Record::decode(&raw)
            .unwrap_or_else(|e| panic!("{name}: {e:?} (after an ABI bump: rerun tests/golden/make_records.py)"));
        let h = &rec.header;
        let got = json!({
            "magic": h.magic, "version": h.version, "header_size": h.header_size,
            "total_size": h.total_size, "n_entries": h.n_entries,
            "trace_id": hex_of(&h.trace_id), "span_id": hex_of(&h.span_id),
            "tid": h.tid, "tgid": h.tgid,
            "begin_mono_ns": h.begin_mono_ns, "end_mono_ns": h.end_mono_ns,
            "begin_real_ns": h.begin_real_ns, "end_real_ns": h.end_real_ns,
            "depth": h.depth, "n_threads": h.n_threads, "flags": h.flags,
            "total_calls": h.total_calls, "total_call_ns": h.total_call_ns,
            "unitemised_calls": h.unitemised_calls, "unitemised_ns": h.unitemised_ns,
            "records_dropped_before": h.records_dropped_before,
        });
        assert_eq!(got, g["header"], "{name}");
        let entries: Vec<Json> = rec
            .entries
            .iter()
            .map(|e| json!([e.nr, e.tid, e.ret, e.start_mono_ns, e.end_mono_ns]))
            .collect();
        assert_eq!(Json::from(entries), g["entries"], "{name}");
        assert_eq!(raw.len(), h.total_size as usize, "{name}");
    }
    for (name, g) in doc["bad_records"].as_object().unwrap() {
        assert!(Record::decode(&hex(g["hex"].as_str().unwrap())).is_err(), "{name} decoded");
    }
}

#[test]
fn every_case_exports_the_golden_spans() {
    let records = golden("records.json");
    let cases = golden("spans.json");
    let mut seen_missing = Vec::new();
    for c in cases["cases"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let original = span(&c["span"]);
        let rec = c["record"]
            .as_str()
            .map(|r| Record::decode(&hex(records["records"][r]["hex"].as_str().unwrap())).unwrap());
        let min_child_ns = u(&c["min_child_ns"]);
        let exp = &c["expected"];
        let mode = c["mode"].as_str().unwrap();
        let (mode, why) = mode.split_once(':').unwrap_or((mode, ""));
        let why: &'static str = missing::ALL.iter().find(|m| **m == why).copied().unwrap_or("");
        let mut p = original.clone();
        let mut n = 0u64;
        let mut ids = || {
            n += 1;
            SpanId::from_bytes(n.to_be_bytes())
        };
        if exp.get("refused").is_some() {
            let rec = rec.unwrap();
            let e = annotate_with(&mut p, &rec, &mut ids, min_child_ns).unwrap_err();
            assert_eq!(e, BadRecord::OtherSpan, "{name}");
            assert_eq!(summarise(&mut p, &rec, min_child_ns).unwrap_err(), BadRecord::OtherSpan, "{name}");
            assert_eq!(p.attributes, original.attributes, "{name}: untouched");
            continue;
        }
        let kids = match mode {
            "mark" => {
                mark(&mut p, why);
                vec![]
            }
            "summarise" => {
                summarise(&mut p, rec.as_ref().unwrap(), min_child_ns).unwrap();
                mark(&mut p, why);
                vec![]
            }
            "annotate" => annotate_with(&mut p, rec.as_ref().unwrap(), &mut ids, min_child_ns).unwrap(),
            other => panic!("{name}: mode {other}"),
        };
        if !why.is_empty() {
            seen_missing.push(why);
        }
        // The parent: the same span, plus the attributes.
        assert_eq!(
            (&p.name, &p.span_context, p.start_time, p.end_time, &p.status),
            (&original.name, &original.span_context, original.start_time, original.end_time, &original.status),
            "{name}"
        );
        assert_eq!(attrs(&p.attributes), expected_attrs(&exp["attributes"]), "{name}: attributes");
        let got: Vec<Json> = kids
            .iter()
            .map(|k| {
                json!({
                    "name": k.name.as_ref(), "start_ns": ns(k.start_time), "end_ns": ns(k.end_time),
                    "attributes": Json::Object(attrs(&k.attributes).into_iter().collect()),
                    "status": status(&k.status),
                })
            })
            .collect();
        assert_eq!(Json::from(got), exp["children"], "{name}: children");
        for (i, k) in kids.iter().enumerate() {
            assert_eq!(k.span_context.trace_id(), original.span_context.trace_id());
            assert_eq!(k.span_context.span_id(), SpanId::from_bytes((i as u64 + 1).to_be_bytes()));
            assert_eq!(k.span_context.trace_flags(), TraceFlags::SAMPLED);
            assert!(!k.span_context.is_remote());
            assert_eq!(k.parent_span_id, original.span_context.span_id());
            assert!(!k.parent_span_is_remote);
            assert_eq!(k.span_kind, SpanKind::Internal);
        }
    }
    seen_missing.sort_unstable();
    let mut all = missing::ALL.to_vec();
    all.sort_unstable();
    assert_eq!(seen_missing, all, "every spantrack.annotation.missing value has a case");
}
