use super::*;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;

fn logs_at(times_ms: &[u64]) -> RecordBatch {
    let text = |v: &str| {
        Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.to_string())),
        })
    };
    let records = times_ms
        .iter()
        .map(|t| LogRecord {
            time_unix_nano: t * 1_000_000,
            severity_number: 17,
            severity_text: "ERROR".into(),
            body: text("disk full on volume data"),
            ..Default::default()
        })
        .collect();
    let resource_logs = vec![ResourceLogs {
        resource: Some(Resource {
            attributes: vec![KeyValue {
                key: "service.name".into(),
                value: text("api"),
                ..Default::default()
            }],
            ..Default::default()
        }),
        scope_logs: vec![ScopeLogs {
            log_records: records,
            ..Default::default()
        }],
        schema_url: String::new(),
    }];
    crate::columnar::logs::to_arrow(&resource_logs, 0)
        .expect("logs")
        .batch
}

#[test]
fn log_records_far_in_the_future_hold_no_state() {
    let config = crate::config::Config::from_toml_str("").expect("defaults");
    let mut stage = DetectStage::new(
        Catalogue::built_in().expect("catalogue"),
        crate::engine::stage_params(&config),
        AnomalyLog::new(10),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    // A year ahead, many distinct windows: none is kept.
    let future: Vec<u64> = (0..1000)
        .map(|i| now + 365 * 86_400_000 + i * 10_000)
        .collect();
    stage.on_logs(&logs_at(&future));
    assert!(stage.template_counts.is_empty());
    stage.on_logs(&logs_at(&[now]));
    assert_eq!(stage.template_counts.len(), 1);
}
