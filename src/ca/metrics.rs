//! The CA's own metrics, in a registry of their own (the CA process is not a
//! proxy and exports none of the proxy's metrics):
//! `portcullis_ca_issued_total{result}`, where `result` is `success` or the
//! refusal code (`bad_csr`, `bad_token`, ...). Every label value is present
//! from the start, at zero.

use prometheus::{Encoder, IntCounterVec, Opts, Registry, TextEncoder};

use super::sign::Code;

/// The CA's metrics.
#[derive(Debug, Clone)]
pub struct CaMetrics {
    registry: Registry,
    issued: IntCounterVec,
}

impl CaMetrics {
    /// Create and register the metrics.
    pub fn new() -> Result<CaMetrics, prometheus::Error> {
        let registry = Registry::new();
        let issued = IntCounterVec::new(
            Opts::new(
                "portcullis_ca_issued_total",
                "Signing requests answered by the CA, by result (success or the refusal code).",
            ),
            &["result"],
        )?;
        registry.register(Box::new(issued.clone()))?;
        issued.with_label_values(&["success"]);
        for code in Code::ALL {
            issued.with_label_values(&[code.as_str()]);
        }
        Ok(CaMetrics { registry, issued })
    }

    /// Count one answered signing request.
    pub fn record(&self, result: Result<(), Code>) {
        let label = match result {
            Ok(()) => "success",
            Err(code) => code.as_str(),
        };
        self.issued.with_label_values(&[label]).inc();
    }

    /// The Prometheus text format.
    pub fn encode(&self) -> Result<String, prometheus::Error> {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_result() {
        let m = CaMetrics::new().unwrap();
        m.record(Ok(()));
        m.record(Err(Code::BadCsr));
        m.record(Err(Code::BadCsr));
        let text = m.encode().unwrap();
        assert!(
            text.contains("portcullis_ca_issued_total{result=\"success\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("portcullis_ca_issued_total{result=\"bad_csr\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("portcullis_ca_issued_total{result=\"token_replayed\"} 0"),
            "{text}"
        );
    }
}
