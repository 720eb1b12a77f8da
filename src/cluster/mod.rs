//! placeholder: cluster definition (issue 2).
