//! One result row per scenario run, printed as a table or as JSON lines.

use std::fmt::Write as _;

use crate::stats::Latencies;

/// A measured result. `rate` is per second of whatever `unit` says.
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub scenario: String,
    pub params: String,
    pub rate: f64,
    pub unit: &'static str,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub extra: Vec<(String, String)>,
}

impl Row {
    pub fn new(scenario: &str, params: String, rate: f64, unit: &'static str) -> Self {
        Self {
            scenario: scenario.into(),
            params,
            rate,
            unit,
            ..Self::default()
        }
    }

    pub fn latencies(mut self, lat: &Latencies) -> Self {
        self.p50_ms = lat.quantile_ms(0.50);
        self.p99_ms = lat.quantile_ms(0.99);
        self.p999_ms = lat.quantile_ms(0.999);
        self
    }

    pub fn extra(mut self, key: &str, value: impl ToString) -> Self {
        self.extra.push((key.into(), value.to_string()));
        self
    }

    pub fn table_line(&self) -> String {
        let mut extra = String::new();
        for (k, v) in &self.extra {
            let _ = write!(extra, " {k}={v}");
        }
        format!(
            "{:<13} {:<28} {:>12.0} {:<6} {:>8.3} {:>8.3} {:>8.3}{}",
            self.scenario,
            self.params,
            self.rate,
            self.unit,
            self.p50_ms,
            self.p99_ms,
            self.p999_ms,
            extra
        )
    }

    pub fn json_line(&self) -> String {
        let mut row = serde_json::json!({
            "scenario": self.scenario,
            "params": self.params,
            "rate": (self.rate * 10.0).round() / 10.0,
            "unit": self.unit,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "p999_ms": self.p999_ms,
        });
        for (key, value) in &self.extra {
            row[key.as_str()] = serde_json::Value::String(value.clone());
        }
        row.to_string()
    }
}

pub fn table_header() -> String {
    format!(
        "{:<13} {:<28} {:>12} {:<6} {:>8} {:>8} {:>8} extra",
        "scenario", "params", "rate/s", "unit", "p50 ms", "p99 ms", "p99.9 ms"
    )
}
