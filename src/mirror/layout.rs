//! placeholder: mirror layout
