//! Schemas written by hand where a derived one could not say enough.

use schemars::{Schema, SchemaGenerator, json_schema};

use crate::policy::{duration, resilience::RetryCondition};

/// `kind: Service`, the only kind a policy targets.
pub(super) fn service_kind(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "string", "enum": ["Service"] })
}

/// A Gateway API duration (`500ms`, `10s`, `1h30m`).
pub(super) fn duration(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "pattern": duration::PATTERN,
        "nullable": true,
    })
}

/// The named retry conditions (`5xx`, `connect-failure`, gRPC codes, ...).
pub(super) fn retry_conditions(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "items": { "type": "string", "enum": RetryCondition::names() },
    })
}
