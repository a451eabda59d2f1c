//! Test support shared by the end-to-end suites of weft.
