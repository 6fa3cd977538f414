//! High availability of instances: restart priorities and the `PUT /v1/instances/{instance}/ha`
//! body (see docs/hosts.md).

use crate::HaPolicy;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Restart priority `high`: restarted before `medium` and `low` ones when a host dies.
pub const HA_PRIORITY_HIGH: u16 = 900;
/// Restart priority `medium`, the default.
pub const HA_PRIORITY_MEDIUM: u16 = 500;
/// Restart priority `low`: restarted last; the first to stay down when capacity is short.
pub const HA_PRIORITY_LOW: u16 = 100;
/// The largest restart priority accepted (priorities are 0 to this).
pub const HA_PRIORITY_MAX: u16 = 1000;

/// Parses a restart priority: `high`, `medium`, `low` or a number from 0 to
/// [`HA_PRIORITY_MAX`] (higher restarts first).
pub fn parse_ha_priority(s: &str) -> Result<u16, String> {
    match s {
        "high" => Ok(HA_PRIORITY_HIGH),
        "medium" => Ok(HA_PRIORITY_MEDIUM),
        "low" => Ok(HA_PRIORITY_LOW),
        _ => s
            .parse::<u16>()
            .ok()
            .filter(|p| *p <= HA_PRIORITY_MAX)
            .ok_or_else(|| {
                format!(
                    "restart priority {s:?}: give high, medium, low or a number from 0 to \
                     {HA_PRIORITY_MAX} (higher restarts first)"
                )
            }),
    }
}

/// A restart priority as shown: its name when it has one (`high`), else the number.
pub fn ha_priority_label(priority: u16) -> String {
    match priority {
        HA_PRIORITY_HIGH => "high".into(),
        HA_PRIORITY_MEDIUM => "medium".into(),
        HA_PRIORITY_LOW => "low".into(),
        n => n.to_string(),
    }
}

/// Body of `PUT /v1/instances/{instance}/ha` (and its answer): the instance's HA from now on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SetInstanceHa {
    /// `restart`: restart it on another host when its host dies; `null`: it stays `error`.
    pub ha: Option<HaPolicy>,
    /// Restart priority, 0 to 1000 (high 900, medium 500, low 100): when a host dies its HA
    /// instances are restarted higher first, so when room is short the lower ones stay down.
    pub ha_priority: u16,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_parse_by_name_or_number_and_show_by_name() {
        assert_eq!(parse_ha_priority("high"), Ok(HA_PRIORITY_HIGH));
        assert_eq!(parse_ha_priority("low"), Ok(HA_PRIORITY_LOW));
        assert_eq!(parse_ha_priority("750"), Ok(750));
        assert_eq!(parse_ha_priority("0"), Ok(0));
        for bad in ["1001", "-1", "urgent", ""] {
            let err = parse_ha_priority(bad).expect_err(bad);
            assert!(err.contains("high, medium, low"), "{err}");
        }
        assert_eq!(ha_priority_label(HA_PRIORITY_MEDIUM), "medium");
        assert_eq!(ha_priority_label(750), "750");
    }
}
