use super::*;

#[test]
fn names_follow_the_convention() {
    let metrics = Metrics::new();
    metrics.records_received.inc_by(3);
    metrics.refused(RefuseReason::InvalidMsisdn).inc();
    let text = metrics.encode();
    assert!(text.contains("cdrvault_ingest_records_received_total 3"), "{text}");
    assert!(text.contains("cdrvault_ingest_records_refused_total{reason=\"invalid_msisdn\"} 1"), "{text}");
    assert!(text.contains("cdrvault_ingest_batch_duration_seconds_bucket"), "{text}");
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(line.starts_with("cdrvault_") || line.starts_with("process_"), "{line}");
    }
}

#[test]
fn the_process_and_the_volumes_are_measured_at_each_scrape() {
    let metrics = Metrics::new();
    metrics.on_scrape(|metrics| metrics.measure_volumes(&[("data", "/")]));
    let text = metrics.encode();
    for name in ["process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds", "process_max_fds"] {
        assert!(text.lines().any(|line| line.starts_with(name)), "{name} missing:\n{text}");
    }
    assert!(text.contains("cdrvault_storage_capacity_bytes{volume=\"data\"}"), "{text}");
    let prometheus_text = metrics.encode_prometheus_text();
    assert!(prometheus_text.contains("# TYPE cdrvault_ingest_batches_total counter"), "{prometheus_text}");
    assert!(!prometheus_text.contains("# EOF"), "{prometheus_text}");
}

/// The alerting rules shipped in deploy/prometheus name only metrics
/// that exist: a renamed metric must not silently disarm an alert.
#[test]
fn every_metric_an_alert_names_is_exported() {
    let metrics = Metrics::new();
    // A labelled family is exported once it has a series.
    metrics.consumer_lag.get_or_create(&PartitionLabels { topic: "cdr".into(), partition: 0 }).set(1);
    metrics.access_calls.get_or_create(&CallLabels { method: "submit", outcome: "ok" }).inc();
    metrics.access_refusals.get_or_create(&ReasonLabel { reason: "unknown_token" }).inc();
    metrics.disclosed("dk-police", 1);
    metrics.partition_owned.get_or_create(&PartitionLabels { topic: "cdr".into(), partition: 0 }).set(1);
    metrics.checkpoint_lag.get_or_create(&PartitionLabels { topic: "cdr".into(), partition: 0 }).set(1);
    metrics.storage_available.get_or_create(&VolumeLabel { volume: "data" }).set(1);
    metrics.storage_capacity.get_or_create(&VolumeLabel { volume: "data" }).set(1);
    let families: Vec<String> = metrics
        .encode()
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split(' ').next())
        .map(str::to_owned)
        .collect();
    let rules = include_str!("../../../deploy/prometheus/cdrvault-rules.yml");
    let mut named = 0;
    for word in rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if !word.starts_with("cdrvault_") {
            continue;
        }
        named += 1;
        let family =
            ["_total", "_bucket", "_sum", "_count"].iter().find_map(|suffix| word.strip_suffix(suffix)).unwrap_or(word);
        assert!(
            families.iter().any(|f| f == family),
            "cdrvault-rules.yml names {word}, which is not among {families:?}"
        );
    }
    assert!(named >= 8, "cdrvault-rules.yml names only {named} metrics");
}
