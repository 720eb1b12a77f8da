//! placeholder: PKI (issue 2).
