//! Catalog diagnose skills (Rust): memory-pressure, top-processes, log-search,
//! service-status, tcp-check, cert-expiry.
