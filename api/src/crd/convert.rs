//! `TryFrom` the CRD types into the policy model.
