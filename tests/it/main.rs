//! Integration tests: real Git repositories (and later a real registry), driven through the
//! library.

mod git;
