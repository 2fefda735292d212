//! Integration tests for Tend live in `all/`; this library is empty.
