//! The golden records and spans of `tests/golden/` (README: "What a slow span carries"): the
//! Rust integration decodes the same bytes as the Python one
//! (`preload/python/tests/test_golden.py`) and must export exactly the same attributes, events,
//! links, child spans, statuses and times. Also: the layout constants in `records.json` are uapi's and
//! the module's (the Python test checks its own against the same file), and `spanhook.h`
//! agrees.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState};
use opentelemetry::{Array, InstrumentationScope, KeyValue, Value};
use opentelemetry::trace::{Event, Link};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use serde_json::{json, Value as Json};
use spantrack_otel::annotate::{annotate_with_symbols, mark, missing, summarise, BadRecord, Record};
use spantrack_otel::stacks::Symbols;
use spantrack_logic::record::RECORD_MAX_SIZE;
use spantrack_uapi as uapi;

fn golden_text(name: &str) -> String {
    let path = format!("{}/../tests/golden/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn golden(name: &str) -> Json {
    serde_json::from_str(&golden_text(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The case's symbol sources (`symbols`: kallsyms and maps files of tests/golden, null or
/// absent: none), never the host's.
fn symbols(c: &Json) -> Symbols {
    let file = |k: &str| c.get("symbols").and_then(|s| s.get(k)).and_then(Json::as_str).map(golden_text);
    Symbols::from_texts(file("kallsyms").as_deref(), file("maps").as_deref())
}

/// A stack as records.json spells it: hex strings, trailing zero entries left out.
fn spelled(stack: &[u64]) -> Json {
    let n = stack.iter().rposition(|&a| a != 0).map_or(0, |i| i + 1);
    Json::from(stack[..n].iter().map(|a| format!("{a:#x}")).collect::<Vec<_>>())
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
        Value::Array(Array::String(v)) => json!(v.iter().map(|s| s.as_str()).collect::<Vec<_>>()),
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

fn event(e: &Event) -> Json {
    json!({
        "name": e.name.as_ref(), "time_ns": ns(e.timestamp),
        "attributes": Json::Object(attrs(&e.attributes).into_iter().collect()),
    })
}

fn link(l: &Link) -> Json {
    let cx = &l.span_context;
    json!({
        "trace_id": hex_of(&cx.trace_id().to_bytes()), "span_id": hex_of(&cx.span_id().to_bytes()),
        "remote": cx.is_remote(), "sampled": cx.is_sampled(),
        "attributes": Json::Object(attrs(&l.attributes).into_iter().collect()),
    })
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
        ("sched", uapi::REC_SCHED),
        ("sched_partial", uapi::REC_SCHED_PARTIAL),
        ("sched_lost", uapi::REC_SCHED_LOST),
    ] {
        assert_eq!(u(&f[k]), u64::from(v), "{k}");
    }
    assert_eq!(u(&lay["sched_part_size"]) as usize, uapi::SCHED_PART_SIZE);
    assert_eq!(u(&lay["wait_entry_size"]) as usize, uapi::WAIT_ENTRY_SIZE);
    assert_eq!(u(&lay["max_waits"]) as usize, uapi::MAX_WAITS);
    assert_eq!(u(&lay["kstack_depth"]) as usize, uapi::KSTACK_DEPTH);
    assert_eq!(u(&lay["ustack_depth"]) as usize, uapi::USTACK_DEPTH);
    assert_eq!(u(&lay["softirq_none"]), u64::from(uapi::SOFTIRQ_NONE));
    assert_eq!(u(&lay["no_call"]), u64::from(uapi::NO_CALL));
    let names: Vec<&str> = lay["softirqs"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(names, spantrack_otel::sched::SOFTIRQS);
    let c = &lay["causes"];
    assert_eq!(c.as_object().unwrap().len(), spantrack_otel::sched::CAUSES.len());
    for (i, name) in spantrack_otel::sched::CAUSES.iter().enumerate() {
        assert_eq!(u(&c[*name]), i as u64, "cause {name}");
    }
    for (k, v) in [
        ("io", uapi::CAUSE_IO),
        ("lock", uapi::CAUSE_LOCK),
        ("net", uapi::CAUSE_NET),
        ("timer", uapi::CAUSE_TIMER),
        ("other", uapi::CAUSE_OTHER),
        ("preempted", uapi::CAUSE_PREEMPTED),
    ] {
        assert_eq!(u(&c[k]), u64::from(v), "cause {k}");
    }
    let c = &lay["contexts"];
    for (k, v) in [
        ("task", uapi::CTX_TASK),
        ("hardirq", uapi::CTX_HARDIRQ),
        ("softirq", uapi::CTX_SOFTIRQ),
        ("nmi", uapi::CTX_NMI),
        ("timer", uapi::CTX_TIMER),
        ("none", uapi::CTX_NONE),
    ] {
        assert_eq!(u(&c[k]), u64::from(v), "context {k}");
    }
    let wf = &lay["wait_flags"];
    assert_eq!(u(&wf["waker_in_span"]), u64::from(uapi::WAIT_WAKER_IN_SPAN));
    assert_eq!(u(&wf["waker_kthread"]), u64::from(uapi::WAIT_WAKER_KTHREAD));
    assert_eq!(spantrack_otel::hook::RECORD_MAX, RECORD_MAX_SIZE);
    // The library's C header: `#define SPANHOOK_RECORD_MAX (256u * 1024u)`, the header size
    // and the library's ABI version (the Rust side's, which the otel crate expects).
    let path = format!("{}/../preload/include/spanhook.h", env!("CARGO_MANIFEST_DIR"));
    let h = std::fs::read_to_string(&path).unwrap();
    let define = |name: &str| -> usize {
        let def = format!("#define {name} ");
        let line = h.lines().find(|l| l.starts_with(&def)).unwrap_or_else(|| panic!("{name}"));
        line[def.len()..]
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<usize>().unwrap())
            .product()
    };
    assert_eq!(define("SPANHOOK_RECORD_MAX"), RECORD_MAX_SIZE);
    assert_eq!(define("SPANHOOK_RECORD_HEADER_SIZE"), uapi::RECORD_HEADER_SIZE);
    assert_eq!(define("SPANHOOK_ABI_VERSION"), spantrack_otel::hook::ABI_VERSION as usize);
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
        // The scheduler part, spelled out beside the header (absent: all zero).
        let p = &h.sched;
        let waits: Vec<Json> = p
            .waits
            .iter()
            .map(|w| {
                json!({
                    "start_mono_ns": w.start_mono_ns, "blocked_ns": w.blocked_ns,
                    "runq_ns": w.runq_ns, "waker_on_cpu_ns": w.waker_on_cpu_ns,
                    "waker_trace_id": hex_of(&w.waker_trace_id),
                    "waker_span_id": hex_of(&w.waker_span_id),
                    "waker_comm": hex_of(&w.waker_comm), "tid": w.tid, "nr": w.nr,
                    "waker_tid": w.waker_tid, "waker_tgid": w.waker_tgid, "waker_nr": w.waker_nr,
                    "cause": w.cause, "waker_ctx": w.waker_ctx, "softirq": w.softirq,
                    "flags": w.flags, "kstack": spelled(&w.kstack), "ustack": spelled(&w.ustack),
                    "n_kstack": w.n_kstack, "n_ustack": w.n_ustack,
                })
            })
            .collect();
        let sched = json!({
            "on_cpu_ns": p.on_cpu_ns, "runq_wakeup_ns": p.runq_wakeup_ns,
            "runq_preempt_ns": p.runq_preempt_ns, "blocked_ns": p.blocked_ns.to_vec(),
            "blocks": p.blocks, "preemptions": p.preemptions, "migrations": p.migrations,
            "wakeups": p.wakeups, "wakeup_total_ns": p.wakeup_total_ns,
            "wakeup_max_ns": p.wakeup_max_ns, "n_waits": p.n_waits,
            "lost_events": p.lost_events, "waits": waits,
        });
        match g.get("sched") {
            Some(want) => assert_eq!(&sched, want, "{name}: sched"),
            None => assert_eq!(*p, uapi::SchedPart::default(), "{name}: sched is all zero"),
        }
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
        let sym = symbols(c);
        let mut p = original.clone();
        let mut n = 0u64;
        let mut ids = || {
            n += 1;
            SpanId::from_bytes(n.to_be_bytes())
        };
        if exp.get("refused").is_some() {
            let rec = rec.unwrap();
            let e = annotate_with_symbols(&mut p, &rec, &mut ids, min_child_ns, &sym).unwrap_err();
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
            "annotate" => annotate_with_symbols(&mut p, rec.as_ref().unwrap(), &mut ids, min_child_ns, &sym).unwrap(),
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
        // Events and links (the golden spans have none of their own): absent means none.
        let none = json!([]);
        assert_eq!(Json::from(p.events.events.iter().map(event).collect::<Vec<_>>()),
                   *exp.get("events").unwrap_or(&none), "{name}: events");
        assert_eq!(Json::from(p.links.links.iter().map(link).collect::<Vec<_>>()),
                   *exp.get("links").unwrap_or(&none), "{name}: links");
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
    seen_missing.dedup();
    let mut all = missing::ALL.to_vec();
    all.sort_unstable();
    assert_eq!(seen_missing, all, "every spantrack.annotation.missing value has a case");
}
