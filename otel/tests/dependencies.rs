//! What a service that depends on `spantrack-otel` gets: the processor and nothing it did not
//! ask for. The demo service (OTLP exporter, the SDK's `testing` feature) is its own crate,
//! `otel/demo_svc/`, built by `cargo build --workspace` as before.

const MANIFEST: &str = include_str!("../Cargo.toml");

fn section(name: &str) -> &'static str {
    let start = MANIFEST.find(&format!("\n[{name}]\n")).unwrap_or_else(|| panic!("[{name}]"));
    let rest = &MANIFEST[start + name.len() + 4..];
    &rest[..rest.find("\n[").unwrap_or(rest.len())]
}

#[test]
fn no_feature_is_on_by_default() {
    let features = section("features");
    assert!(
        !features.lines().any(|l| l.trim_start().starts_with("default")),
        "otel/Cargo.toml turns features on by default:\n{features}"
    );
}

#[test]
fn no_exporter_and_no_sdk_testing_for_library_users() {
    let deps = section("dependencies");
    assert!(!deps.contains("opentelemetry-otlp"), "{deps}");
    assert!(!deps.contains("testing"), "{deps}");
    assert!(!section("features").contains("testing"));
}
