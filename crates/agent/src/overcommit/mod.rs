//! Overcommit on this host: the allocation ratios the host accepts (reported with its
//! inventory; the controller's scheduler applies them) and memory deduplication by
//! [`ksm`].

pub mod ksm;

pub use ksm::KsmConfig;

/// How much this host may be overcommitted.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overcommit {
    /// vCPUs offered per physical CPU; `None`: the controller's default.
    pub cpu_allocation_ratio: Option<f64>,
    /// Memory offered per MiB of physical memory; `None`: the controller's default.
    pub ram_allocation_ratio: Option<f64>,
    pub ksm: KsmConfig,
}

impl Overcommit {
    /// No ratios of its own and KSM left as the kernel has it (tests, hosts where another
    /// tool owns KSM).
    pub fn untouched() -> Self {
        Self {
            ksm: KsmConfig {
                manage: false,
                ..KsmConfig::default()
            },
            ..Self::default()
        }
    }

    /// Checks the ratios (positive, finite).
    pub fn validate(&self) -> Result<(), String> {
        for (name, r) in [
            ("--cpu-allocation-ratio", self.cpu_allocation_ratio),
            ("--ram-allocation-ratio", self.ram_allocation_ratio),
        ] {
            if let Some(r) = r {
                if !(r.is_finite() && r > 0.0 && r <= 64.0) {
                    return Err(format!(
                        "{name} must be a number above 0 and at most 64, not {r}"
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_must_be_sane() {
        let mut o = Overcommit::default();
        assert!(o.validate().is_ok());
        o.cpu_allocation_ratio = Some(4.0);
        assert!(o.validate().is_ok());
        o.ram_allocation_ratio = Some(0.0);
        assert!(o
            .validate()
            .expect_err("an error")
            .contains("--ram-allocation-ratio"));
    }
}
