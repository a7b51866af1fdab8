//! One typed configuration: embedded defaults < TOML file < `HOMEOSTAT__SECTION__KEY` env.
//!
//! Unknown keys are refused, and [`Config::load`] reports every problem it finds at once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

/// The embedded defaults, the single source of every default value.
pub const DEFAULT_TOML: &str = include_str!("config/default.toml");

/// The whole engine configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// OTLP receivers.
    pub otlp: OtlpConfig,
    /// Kafka ingestion of OTLP topics.
    pub kafka: KafkaConfig,
    /// Event-time windows.
    pub window: WindowConfig,
    /// The queue between receivers and the window stage.
    pub pipeline: PipelineConfig,
    /// Embedded persistence of closed windows.
    pub store: StoreConfig,
    /// The API listener: health, Prometheus metrics, SQL.
    pub api: ApiConfig,
    /// Detection.
    pub detect: DetectConfig,
}

/// Detection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectConfig {
    /// Whether closed windows are run through the detectors.
    pub enabled: bool,
    /// The failure-pattern catalogue: a TOML file or a directory of them. The
    /// default `models` falls back to the built-in copy when it does not exist;
    /// empty always uses the built-in copy.
    pub catalogue: PathBuf,
    /// Most series with a baseline (about 1.3 KB each); more are counted, not tracked.
    pub max_series: usize,
    /// Most series run through the univariate detector (about 55 KB each).
    pub max_univariate_series: usize,
    /// Most mined log templates.
    pub max_templates: usize,
    /// Share of equal tokens for a log message to join a template.
    pub template_similarity: f64,
    /// Windows of a service's logs mined before its new templates are anomalies.
    pub template_warmup: u32,
    /// Closed windows between snapshots of the baselines (with `store.path`).
    pub snapshot_every: u32,
    /// Most anomalies kept for the `anomalies` table.
    pub max_anomalies: usize,
    /// How long an ended anomaly stays in the `anomalies` table (event time),
    /// independent of `window.retain`.
    #[serde(with = "humantime_serde")]
    pub anomaly_retain: std::time::Duration,
    /// Baseline learning.
    pub baseline: crate::detect::BaselineParams,
    /// The univariate detector's parameters, one set for every series (and for
    /// `homeostat replay`).
    pub univariate: crate::detect::UnivariateParams,
}

/// OTLP receivers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// Address of the OTLP/gRPC receiver.
    pub grpc_addr: SocketAddr,
    /// Address of the OTLP/HTTP receiver (`/v1/traces`, `/v1/metrics`, `/v1/logs`).
    pub http_addr: SocketAddr,
    /// Largest accepted request body, checked before and after decompression.
    pub max_request_bytes: usize,
}

/// Wire encoding of Kafka records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KafkaEncoding {
    /// Serialized `TracesData` / `MetricsData` / `LogsData` protobuf.
    OtlpProto,
    /// The OTLP JSON encoding of the same messages.
    OtlpJson,
}

/// Kafka ingestion.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, comma separated; empty turns Kafka ingestion off.
    pub brokers: String,
    /// Consumer group id.
    pub group_id: String,
    /// Topic carrying spans.
    pub spans_topic: String,
    /// Topic carrying metrics.
    pub metrics_topic: String,
    /// Topic carrying logs.
    pub logs_topic: String,
    /// Record encoding.
    pub encoding: KafkaEncoding,
    /// Consumer session timeout (`session.timeout.ms`).
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// How often offsets of fully processed records are committed.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Extra librdkafka client properties (`security.protocol`, `sasl.*`, `ssl.*`,
    /// ...), applied after Homeostat's own settings.
    pub librdkafka_options: BTreeMap<String, String>,
}

/// Event-time windows.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// Tumbling window length.
    #[serde(with = "humantime_serde")]
    pub size: Duration,
    /// How far behind the newest event time a record may be and still count.
    #[serde(with = "humantime_serde")]
    pub allowed_lateness: Duration,
    /// Processing time without input after which open windows close.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How much event-time history of closed windows is kept.
    #[serde(with = "humantime_serde")]
    pub retain: Duration,
    /// Event time a span waits in the pairing store for its parent or child.
    #[serde(with = "humantime_serde")]
    pub pair_ttl: Duration,
    /// Most spans held in the pairing store; overflow is counted and not paired.
    pub max_pending_pairs: usize,
    /// Most series (rows) per table per window; overflow is counted and dropped.
    pub max_series: usize,
    /// Most record identities remembered per window for de-duplication.
    pub max_dedup_keys: usize,
    /// Records stamped further than this in the future are rejected.
    #[serde(with = "humantime_serde")]
    pub max_future_skew: Duration,
}

/// The queue between receivers and the window stage.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Batches queued before receivers answer 503 / UNAVAILABLE.
    pub queue_capacity: usize,
}

/// Embedded persistence of closed windows.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Directory for closed windows and the checkpoint; empty keeps history in memory only.
    pub path: PathBuf,
}

/// The API listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Address serving `/healthz`, `/metrics` and `/sql`.
    pub addr: SocketAddr,
    /// Most rows a SQL answer returns.
    pub max_result_rows: usize,
}

/// A configuration that could not be loaded; lists every problem found.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", problems.join("\n  - "))]
pub struct ConfigError {
    /// One line per problem.
    pub problems: Vec<String>,
}

impl Config {
    /// Loads embedded defaults, then `file` if given, then `HOMEOSTAT__SECTION__KEY` variables.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_from(file, Env::prefixed("HOMEOSTAT__").split("__"))
    }

    fn load_from(file: Option<&Path>, env: Env) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError {
                    problems: vec![format!("config file {} does not exist", path.display())],
                });
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        Self::extract(figment.merge(env))
    }

    /// Parses a TOML document layered over the defaults (no env).
    pub fn from_toml_str(toml: &str) -> Result<Config, ConfigError> {
        Self::from_toml_layers(&[toml])
    }

    /// Parses TOML documents layered over the defaults, later ones winning (no env).
    pub fn from_toml_layers(layers: &[&str]) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
        for layer in layers {
            figment = figment.merge(Toml::string(layer));
        }
        Self::extract(figment)
    }

    /// Extracts section by section so that one bad section does not hide the
    /// problems of the others, and reports unknown keys; then validates.
    fn extract(figment: Figment) -> Result<Config, ConfigError> {
        let mut problems = unknown_keys(&figment);
        fn section<T: serde::de::DeserializeOwned>(
            figment: &Figment,
            name: &str,
            problems: &mut Vec<String>,
        ) -> Option<T> {
            figment
                .extract_inner::<T>(name)
                .map_err(|error| {
                    // Unknown keys are already reported, by their full path.
                    problems.extend(
                        error
                            .into_iter()
                            .filter(|e| !matches!(e.kind, figment::error::Kind::UnknownField(..)))
                            .map(|e| e.to_string()),
                    )
                })
                .ok()
        }
        let otlp = section(&figment, "otlp", &mut problems);
        let kafka = section(&figment, "kafka", &mut problems);
        let window = section(&figment, "window", &mut problems);
        let pipeline = section(&figment, "pipeline", &mut problems);
        let store = section(&figment, "store", &mut problems);
        let api = section(&figment, "api", &mut problems);
        let detect = section(&figment, "detect", &mut problems);
        let (
            Some(otlp),
            Some(kafka),
            Some(window),
            Some(pipeline),
            Some(store),
            Some(api),
            Some(detect),
        ) = (otlp, kafka, window, pipeline, store, api, detect)
        else {
            return Err(ConfigError { problems });
        };
        let config = Config {
            otlp,
            kafka,
            window,
            pipeline,
            store,
            api,
            detect,
        };
        if let Err(error) = config.validate() {
            problems.extend(error.problems);
        }
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError { problems })
        }
    }

    /// Checks the cross-field rules; reports every violation.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let w = &self.window;
        if w.size < Duration::from_millis(1) {
            problems.push("window.size must be at least 1ms".to_string());
        }
        if w.idle_timeout.is_zero() {
            problems.push("window.idle_timeout must be positive".to_string());
        }
        if w.retain < w.size {
            problems.push("window.retain must be at least window.size".to_string());
        }
        if w.max_series == 0 {
            problems.push("window.max_series must be positive".to_string());
        }
        if self.pipeline.queue_capacity == 0 {
            problems.push("pipeline.queue_capacity must be positive".to_string());
        }
        if self.otlp.max_request_bytes == 0 {
            problems.push("otlp.max_request_bytes must be positive".to_string());
        }
        if self.api.max_result_rows == 0 {
            problems.push("api.max_result_rows must be positive".to_string());
        }
        problems.extend(self.detect.univariate.problems("detect.univariate"));
        problems.extend(self.detect.baseline.problems("detect.baseline"));
        let d = &self.detect;
        if !(d.template_similarity > 0.0 && d.template_similarity <= 1.0) {
            problems.push("detect.template_similarity must be in (0, 1]".to_string());
        }
        for (key, value) in [
            ("detect.max_series", d.max_series),
            ("detect.max_templates", d.max_templates),
            ("detect.max_anomalies", d.max_anomalies),
            ("detect.snapshot_every", d.snapshot_every as usize),
        ] {
            if value == 0 {
                problems.push(format!("{key} must be positive"));
            }
        }
        let k = &self.kafka;
        if !k.brokers.trim().is_empty() {
            for (key, value) in [
                ("kafka.group_id", &k.group_id),
                ("kafka.spans_topic", &k.spans_topic),
                ("kafka.metrics_topic", &k.metrics_topic),
                ("kafka.logs_topic", &k.logs_topic),
            ] {
                if value.trim().is_empty() {
                    problems.push(format!("{key} must not be empty when kafka.brokers is set"));
                }
            }
            if k.session_timeout < Duration::from_secs(1) {
                problems.push("kafka.session_timeout must be at least 1s".to_string());
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }

    /// Whether Kafka ingestion is on.
    pub fn kafka_enabled(&self) -> bool {
        !self.kafka.brokers.trim().is_empty()
    }
}

/// Keys present in the merged configuration but not in the embedded defaults (which
/// name every key there is).
fn unknown_keys(figment: &Figment) -> Vec<String> {
    use figment::Provider;
    use figment::value::{Dict, Value};
    fn walk(known: &Dict, actual: &Dict, prefix: &str, out: &mut Vec<String>) {
        for (key, value) in actual {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            match (known.get(key), value) {
                (None, _) => out.push(format!("unknown key `{path}`")),
                // An empty table in the defaults is free-form (librdkafka options).
                (Some(Value::Dict(_, known)), Value::Dict(_, actual)) if !known.is_empty() => {
                    walk(known, actual, &path, out)
                }
                _ => {}
            }
        }
    }
    let defaults = Figment::from(Toml::string(DEFAULT_TOML));
    let (Ok(known), Ok(actual)) = (defaults.data(), figment.data()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let (Some(known), Some(actual)) = (known.values().next(), actual.values().next()) {
        walk(known, actual, "", &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_contract() {
        let config = Config::from_toml_str("").expect("defaults load");
        assert_eq!(config.otlp.grpc_addr.to_string(), "127.0.0.1:4317");
        assert_eq!(config.otlp.http_addr.to_string(), "127.0.0.1:4318");
        assert_eq!(config.otlp.max_request_bytes, 67_108_864);
        assert_eq!(config.api.addr.to_string(), "127.0.0.1:7070");
        assert_eq!(config.window.size, Duration::from_secs(10));
        assert_eq!(config.window.allowed_lateness, Duration::from_secs(5));
        assert_eq!(config.window.idle_timeout, Duration::from_secs(30));
        assert_eq!(config.window.retain, Duration::from_secs(3600));
        assert_eq!(config.kafka.encoding, KafkaEncoding::OtlpProto);
        assert!(!config.kafka_enabled());
    }

    #[test]
    fn librdkafka_options_are_free_form() {
        let config = Config::from_toml_str(
            "[kafka.librdkafka_options]\n\"security.protocol\" = \"sasl_ssl\"\n\"api.version.request\" = \"false\"\n",
        )
        .expect("valid");
        let options: Vec<(&str, &str)> = config
            .kafka
            .librdkafka_options
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            options,
            vec![
                ("api.version.request", "false"),
                ("security.protocol", "sasl_ssl")
            ]
        );
    }

    #[test]
    fn every_problem_is_reported() {
        let error = Config::from_toml_str(
            "[window]\nsize = \"1m\"\nretain = \"10s\"\nmax_series = 0\n[pipeline]\nqueue_capacity = 0\n",
        )
        .expect_err("invalid");
        assert_eq!(error.problems.len(), 3, "{error}");
        let error = Config::from_toml_str("[otlp]\nbogus = 1\n[api]\naddr = \"nope\"\n")
            .expect_err("invalid");
        let text = error.to_string();
        assert!(text.contains("unknown key `otlp.bogus`"), "{text}");
        assert!(text.contains("invalid socket address"), "{text}");
        assert_eq!(error.problems.len(), 2, "{text}");
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn env_overrides_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[kafka]\ngroup_id = \"from-file\"\n").expect("write");
        figment::Jail::expect_with(|jail| {
            jail.set_env("HOMEOSTAT__KAFKA__GROUP_ID", "from-env");
            jail.set_env("HOMEOSTAT__WINDOW__SIZE", "1m");
            let config = Config::load(Some(&path)).map_err(|e| e.to_string())?;
            assert_eq!(config.kafka.group_id, "from-env");
            assert_eq!(config.window.size, Duration::from_secs(60));
            Ok(())
        });
    }
}
