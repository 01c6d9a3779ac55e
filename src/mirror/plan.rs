//! placeholder: mirror plan
