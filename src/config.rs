//! One typed configuration: embedded defaults < TOML file < `HOMEOSTAT__SECTION__KEY` env.
//!
//! Unknown keys are refused, and [`Config::load`] reports every problem it finds at once.
//!
//! Each stage owns its section's type and rules (`window::config`,
//! `detect::config`, `ingest::config`, `pipeline`, `store`, `api`); this module
//! only aggregates them, so no stage depends on it.

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

pub use crate::api::ApiConfig;
pub use crate::detect::config::DetectConfig;
pub use crate::executor::config::ExecutorConfig;
pub use crate::incident::config::IncidentConfig;
pub use crate::ingest::config::{KafkaConfig, KafkaEncoding, OtlpConfig};
pub use crate::pipeline::PipelineConfig;
pub use crate::remediate::config::RemediationConfig;
pub use crate::store::StoreConfig;
pub use crate::window::config::WindowConfig;

/// The embedded defaults, the single source of every default value.
pub const DEFAULT_TOML: &str = include_str!("config/default.toml");

/// The whole engine configuration. Unknown keys are reported by
/// `unknown_keys` (by their full path), in every section and at the top.
#[derive(Debug, Clone, Deserialize)]
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
    /// Incidents.
    pub incident: IncidentConfig,
    /// Remediation.
    pub remediation: RemediationConfig,
    /// The reference executor.
    pub executor: ExecutorConfig,
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
        ) -> bool {
            let Err(error) = figment.extract_inner::<T>(name) else {
                return true;
            };
            // Unknown keys are already reported, by their full path.
            problems.extend(
                error
                    .into_iter()
                    .filter(|e| !matches!(e.kind, figment::error::Kind::UnknownField(..)))
                    .map(|e| e.to_string()),
            );
            false
        }
        // Each section on its own, so one bad section does not hide the others'.
        let parsed = [
            section::<OtlpConfig>(&figment, "otlp", &mut problems),
            section::<KafkaConfig>(&figment, "kafka", &mut problems),
            section::<WindowConfig>(&figment, "window", &mut problems),
            section::<PipelineConfig>(&figment, "pipeline", &mut problems),
            section::<StoreConfig>(&figment, "store", &mut problems),
            section::<ApiConfig>(&figment, "api", &mut problems),
            section::<DetectConfig>(&figment, "detect", &mut problems),
            section::<IncidentConfig>(&figment, "incident", &mut problems),
            section::<RemediationConfig>(&figment, "remediation", &mut problems),
            section::<ExecutorConfig>(&figment, "executor", &mut problems),
        ];
        if parsed.contains(&false) {
            return Err(ConfigError { problems });
        }
        // Top-level unknown keys are in `problems` already; the sections parse.
        let config: Config = figment.extract().map_err(|error| ConfigError {
            problems: error.into_iter().map(|e| e.to_string()).collect(),
        })?;
        if let Err(error) = config.validate() {
            problems.extend(error.problems);
        }
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError { problems })
        }
    }

    /// Checks every section's rules (each section's type owns them); reports
    /// every violation.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        problems.extend(self.otlp.problems());
        problems.extend(self.kafka.problems());
        problems.extend(self.window.problems());
        problems.extend(self.pipeline.problems());
        problems.extend(self.api.problems());
        problems.extend(self.detect.problems());
        problems.extend(self.incident.problems());
        problems.extend(self.remediation.problems());
        problems.extend(self.executor.problems());
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }

    /// Whether Kafka ingestion is on.
    pub fn kafka_enabled(&self) -> bool {
        self.kafka.enabled()
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
    use std::time::Duration;

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
