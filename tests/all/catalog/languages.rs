//! Catalog skills written in Python and JavaScript, tested like the rest.
